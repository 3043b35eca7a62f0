"""Sequence-mixing ops, one folder per op: a float32 naive recurrence (ground truth), a chunked PyTorch
form (CPU), Triton kernels (GPU) and a token-by-token step for decoding."""

from alloyml.kernels.gla import gla, gla_step
from alloyml.kernels.linear_attn import linear_attn, linear_attn_step
from alloyml.kernels.selective_scan import selective_scan, selective_scan_step

__all__ = ["gla", "gla_step", "linear_attn", "linear_attn_step", "selective_scan", "selective_scan_step"]
