"""Sequence-mixing ops, one folder per op. Each op's package defines the op (its checks and how it maps
onto the one gated linear recurrence of common/, run chunked in PyTorch on CPU or by Triton kernels on
GPU); naive.py is its reference recurrence written from the paper (float64 for float64 inputs), and
recurrent.py its token-by-token step for decoding."""

from alloyml.kernels.delta import delta_rule, delta_rule_step, gated_delta_rule, gated_delta_rule_step
from alloyml.kernels.gla import gla, gla_step
from alloyml.kernels.linear_attn import linear_attn, linear_attn_step
from alloyml.kernels.lru import lru, lru_step
from alloyml.kernels.rglru import rglru, rglru_step
from alloyml.kernels.s4d import s4d, s4d_step
from alloyml.kernels.s6 import s6, s6_step
from alloyml.kernels.selective_scan import selective_scan, selective_scan_step
from alloyml.kernels.ttt import ttt, ttt_linear, ttt_mlp, ttt_step

__all__ = ["gla", "gla_step", "linear_attn", "linear_attn_step", "lru", "lru_step", "rglru", "rglru_step",
           "s4d", "s4d_step", "s6", "s6_step", "selective_scan",
           "selective_scan_step"]
__all__ += ["delta_rule", "delta_rule_step", "gated_delta_rule", "gated_delta_rule_step", "ttt", "ttt_linear",
            "ttt_mlp", "ttt_step"]

from alloyml.kernels.local_attn import local_attn  # noqa: E402
from alloyml.kernels.long_conv import long_conv, long_conv_step  # noqa: E402

__all__ += ["local_attn", "long_conv", "long_conv_step"]
