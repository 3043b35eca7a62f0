"""A Mixtral-layout MoE checkpoint from Hugging Face Llama/Mistral experts, as `mergekit-moe` builds one.

`mixtral_from_experts(base, experts, out_dir)` writes a directory `transformers.MixtralForCausalLM` loads:
attention, norms, embeddings and head are the base model's; layer i's experts are the experts' own
feed-forwards (`gate_proj`/`up_proj` fused into `experts.gate_up_proj[e]`, `down_proj` into
`experts.down_proj[e]`, transformers' layout); the router `mlp.gate.weight` of layer i has one row per
expert, initialised as mergekit-moe's gate modes do:

- `hidden` (default, mergekit's): the base model, in bfloat16, reads each expert's `positive_prompts`
  (its tokenizer's BOS prepended, left-padded with BOS); row e of layer i is the hidden state entering
  layer i at the last position, averaged over the prompts, minus the same for `negative_prompts`, and
  L2-normalised. `hidden_avg` averages over positions instead (padding included, as mergekit does).
- `cheap_embed`: the normalised sum of the prompts' token embeddings, the same for every layer.
- `random` / `uniform_random`: N(0, 1), or U(±1/√hidden) (nn.Linear's init), from a generator seeded by
  `seed` (mergekit draws from torch's global generator: the draws differ, the distributions do not).

`residual_scale` scales an expert's `down_proj`. With `router_steps` > 0 the routers are then trained
(everything else frozen) for that many steps of next-token loss on `train_texts` (with top-1 routing the
router gets no gradient from that loss, since the one chosen expert's weight is always 1: use top-2 or more).
Tensors are written one at a time (one layer's stacked experts at most), so memory stays near one layer.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alloyml.atomic import atomic_directory
from alloyml.errors import InvalidInputError
from alloyml.merging.checkpoints import TensorInfo, open_checkpoint
from alloyml.merging.writer import ShardedWriter

GATE_MODES = ("hidden", "hidden_avg", "hidden_last", "cheap_embed", "random", "uniform_random")
_MLP = ("gate_proj", "up_proj", "down_proj")


@dataclass
class Expert:
    """One expert: its checkpoint directory and the prompts its router row is made from."""

    model: str
    positive_prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    residual_scale: float | None = None


@dataclass
class MixtralBuild:
    path: Path
    num_experts: int
    gates: torch.Tensor  # (layers, experts, hidden): the routers as initialised
    router_losses: list[float] = field(default_factory=list)


def _expert(spec: Expert | dict | str) -> Expert:
    if isinstance(spec, Expert):
        return spec
    if isinstance(spec, str | os.PathLike):
        return Expert(os.fspath(spec))
    if not isinstance(spec, dict):
        raise InvalidInputError(f"an expert is a path or a mapping with `source_model`, got {spec!r}")
    known = {"source_model", "model", "positive_prompts", "negative_prompts", "residual_scale", "noise_scale"}
    unknown = set(spec) - known
    if unknown:
        raise InvalidInputError(f"expert {spec}: unknown keys {sorted(unknown)}")
    if spec.get("noise_scale") is not None:
        raise InvalidInputError("expert `noise_scale` is not supported (mergekit draws it from torch's global "
                                "generator, so no seeded reproduction could match it); remove it")
    model = spec.get("source_model", spec.get("model"))
    if not isinstance(model, str):
        raise InvalidInputError(f"expert {spec}: `source_model` must be a path")
    return Expert(model, list(spec.get("positive_prompts") or []), list(spec.get("negative_prompts") or []),
                  spec.get("residual_scale"))


def _tokenizer(base: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tok.padding_side = "left"
    tok.pad_token_id = tok.bos_token_id
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _tokenize(tok, prompts: Sequence[str]):
    return tok([(tok.bos_token or "") + p for p in prompts], return_tensors="pt", padding=True,
               add_special_tokens=False)


@torch.no_grad()
def gate_vectors(base: str, experts: Sequence[Expert], mode: str = "hidden", seed: int = 0) -> torch.Tensor:
    """Router rows (layers, experts, hidden) by mergekit-moe's gate mode `mode` (see the module doc)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(base)
    layers, hidden = cfg.num_hidden_layers, cfg.hidden_size
    if mode in ("random", "uniform_random"):
        gen = torch.Generator().manual_seed(seed)
        if mode == "random":
            return torch.randn((layers, len(experts), hidden), generator=gen)
        scale = math.sqrt(1.0 / hidden)
        return torch.rand((layers, len(experts), hidden), generator=gen) * 2 * scale - scale
    tok = _tokenizer(base)
    if mode == "cheap_embed":
        embed = open_checkpoint(base).read("model.embed_tokens.weight").float()

        def states(batch):
            onehot = torch.nn.functional.one_hot(batch["input_ids"], num_classes=cfg.vocab_size).float()
            summed = ((onehot @ embed) * batch["attention_mask"].unsqueeze(-1)).sum(dim=1).sum(dim=0, keepdim=True)
            return (summed / summed.norm(dim=-1, keepdim=True).clamp(min=1e-8)).repeat(layers, 1)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).eval()

        def states(batch):
            out = model(**batch, output_hidden_states=True, return_dict=True)
            h = torch.stack(out.hidden_states[:-1])  # (layers, batch, seq, hidden): each layer's input
            h = h.sum(dim=2) / h.shape[2] if mode == "hidden_avg" else h[:, :, -1, :]
            return h.sum(dim=1) / h.shape[1]

    rows = []
    for expert in experts:
        h = states(_tokenize(tok, expert.positive_prompts))
        if expert.negative_prompts:
            h -= states(_tokenize(tok, expert.negative_prompts))
        h /= h.norm(p=2, dim=-1, keepdim=True).clamp(min=1e-8)
        rows.append(h)
    return torch.stack(rows).permute(1, 0, 2)


def _mixtral_config(base: str, num_experts: int, per_token: int, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    cfg = transformers.AutoConfig.from_pretrained(base)
    if cfg.model_type not in ("llama", "mistral"):
        raise InvalidInputError(f"{base}: model_type {cfg.model_type!r}; Mixtral experts must be Llama or Mistral")
    if not isinstance(cfg, transformers.MistralConfig):
        mistral = transformers.MistralConfig(**cfg.to_dict())
        mistral.sliding_window = None
        mistral.max_position_embeddings = cfg.max_position_embeddings
        cfg = mistral
    out = transformers.MixtralConfig(**cfg.to_dict())
    out.architectures = ["MixtralForCausalLM"]
    out.num_local_experts, out.num_experts_per_tok, out.sliding_window = num_experts, per_token, None
    out.torch_dtype = dtype
    return out


def mixtral_from_experts(
    base: str | os.PathLike,
    experts: Sequence[Expert | dict | str],
    out_dir: str | os.PathLike,
    *,
    gate_mode: str = "hidden",
    experts_per_token: int = 2,
    dtype: str | None = None,
    seed: int = 0,
    router_steps: int = 0,
    train_texts: Sequence[str] = (),
    router_lr: float = 1e-3,
    overwrite: bool = False,
) -> MixtralBuild:
    """Write a Mixtral MoE of `experts` (dense Llama/Mistral checkpoints shaped like `base`) to `out_dir`."""
    base = os.fspath(base)
    specs = [_expert(e) for e in experts]
    if gate_mode not in GATE_MODES:
        raise InvalidInputError(f"gate_mode {gate_mode!r}; expected one of {', '.join(GATE_MODES)}")
    if isinstance(experts_per_token, bool) or not isinstance(experts_per_token, int) or experts_per_token < 1:
        raise InvalidInputError(f"experts_per_token must be a positive integer, got {experts_per_token!r}")
    if len(specs) < max(2, experts_per_token):
        raise InvalidInputError(f"{len(specs)} experts for experts_per_token={experts_per_token}; give at least "
                                f"{max(2, experts_per_token)}")
    if gate_mode not in ("random", "uniform_random"):
        for i, e in enumerate(specs):
            if not e.positive_prompts:
                raise InvalidInputError(f"expert {i} ({e.model}) has no positive_prompts, which gate_mode "
                                        f"{gate_mode!r} builds its router row from")
    if router_steps and not train_texts:
        raise InvalidInputError("router_steps > 0 needs train_texts to train the routers on")
    base_ckpt = open_checkpoint(base)
    ckpts = [open_checkpoint(e.model) for e in specs]
    layers = json.loads((Path(base) / "config.json").read_text())["num_hidden_layers"]
    for e, ck in zip(specs, ckpts, strict=True):
        for i in range(layers):
            for part in _MLP:
                name = f"model.layers.{i}.mlp.{part}.weight"
                if name not in ck.infos or ck.infos[name].shape != base_ckpt.infos[name].shape:
                    raise InvalidInputError(f"expert {e.model}: {name} is missing or not shaped like the base's")
    first = base_ckpt.infos["model.embed_tokens.weight"].dtype
    out_dtype = getattr(torch, dtype) if dtype else first
    config = _mixtral_config(base, len(specs), experts_per_token, out_dtype)
    gates = gate_vectors(base, specs, gate_mode, seed)

    shared = {n: i for n, i in base_ckpt.infos.items() if ".mlp." not in n}
    infos = {n: TensorInfo(i.shape, out_dtype) for n, i in shared.items()}
    for i in range(layers):
        inter, hidden = base_ckpt.infos[f"model.layers.{i}.mlp.gate_proj.weight"].shape
        infos[f"model.layers.{i}.mlp.experts.gate_up_proj"] = TensorInfo((len(specs), 2 * inter, hidden), out_dtype)
        infos[f"model.layers.{i}.mlp.experts.down_proj"] = TensorInfo((len(specs), hidden, inter), out_dtype)
        infos[f"model.layers.{i}.mlp.gate.weight"] = TensorInfo((len(specs), hidden), out_dtype)
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        writer = ShardedWriter(staging, infos, 2 * 1024**3)
        for name in shared:
            writer.write(name, base_ckpt.read(name).to(out_dtype))
        for i in range(layers):
            p = f"model.layers.{i}.mlp."
            gate_up, down = [], []
            for e, ck in zip(specs, ckpts, strict=True):
                gate_up.append(torch.cat([ck.read(p + "gate_proj.weight"), ck.read(p + "up_proj.weight")]))
                d = ck.read(p + "down_proj.weight")
                down.append(d * e.residual_scale if e.residual_scale is not None else d)
            writer.write(p + "experts.gate_up_proj", torch.stack(gate_up).to(out_dtype).contiguous())
            writer.write(p + "experts.down_proj", torch.stack(down).to(out_dtype).contiguous())
            writer.write(p + "gate.weight", gates[i].to(out_dtype).contiguous())
        writer.close()
        config.save_pretrained(staging)
        if (Path(base) / "tokenizer_config.json").exists():
            _tokenizer(base).save_pretrained(staging)
    for ck in (base_ckpt, *ckpts):
        ck.close()
    result = MixtralBuild(Path(out_dir), len(specs), gates)
    if router_steps:
        result.router_losses = train_routers(out_dir, train_texts, router_steps, router_lr)
    return result


def train_routers(directory: str | os.PathLike, texts: Sequence[str], steps: int, lr: float = 1e-3) -> list[float]:
    """Train only the routers (`mlp.gate.weight`) of the Mixtral in `directory` on next-token loss over
    `texts` (one batch of all of them per step), then save it back; returns the loss per step."""
    from transformers import AutoTokenizer, MixtralForCausalLM

    model = MixtralForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(directory)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = tok(list(texts), return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name.endswith("mlp.gate.weight"))
        if param.requires_grad:
            params.append(param)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    dtype = json.loads((Path(directory) / "config.json").read_text()).get("torch_dtype") or "float32"
    model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype).save_pretrained(directory)
    return losses
