"""Input checks shared by every op: shapes, dtypes, devices, `cu_seqlens` and `initial_state`.

Each check raises `InvalidInputError` naming the argument and what was expected, before any work starts.
Values inside large tensors (gate signs, say) are not scanned: that would cost a pass over the data.
Values of small tensors (per-head decays, `cu_seqlens`) are read only where reading them is free: on CPU
tensors outside torch.compile. On a GPU, reading them would stop the host until the device catches up
(and block CUDA-graph capture) in every layer of every forward, so there they are checked only with
ALLOYML_CHECK_VALUES=1.
"""

from __future__ import annotations

from alloyml.errors import InvalidInputError

BACKENDS = ("auto", "naive", "chunk", "triton", "triton_recurrent")
TRITON_BACKENDS = ("triton", "triton_recurrent")  # chunked and step-by-step GPU kernels


def resolve_backend(backend: str, ref) -> str:
    """"auto" -> "triton" (chunked kernels) for CUDA tensors, "chunk" (PyTorch) otherwise; checks an explicit
    choice: the Triton backends need CUDA tensors, or Triton's CPU interpreter."""
    import os

    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if ref.is_cuda else "chunk"
    if backend in TRITON_BACKENDS and not ref.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise InvalidInputError(f"backend={backend!r} needs CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return backend


CHECK_VALUES_ENV = "ALLOYML_CHECK_VALUES"  # "1": read small tensors' values on any device (a sync on CUDA)


def values_readable(x) -> bool:
    """Whether the value checks read `x`: on the CPU outside torch.compile (where that costs no device
    sync and no graph break), or anywhere when ALLOYML_CHECK_VALUES=1."""
    import os

    import torch

    if os.environ.get(CHECK_VALUES_ENV) == "1":
        return True
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def default_scale(scale: float | None, K: int) -> float:
    """The attention scale, K ** -0.5 unless given."""
    return K**-0.5 if scale is None else float(scale)


def check_tensor(name: str, x, shape: tuple, ref, allow_complex: bool = False) -> None:
    """`x` is a floating tensor (or complex, with `allow_complex`) of `shape` (entries None match anything)
    on `ref`'s device."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise InvalidInputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if allow_complex and x.is_complex():
        pass
    elif not x.is_floating_point():
        raise InvalidInputError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.device != ref.device:
        raise InvalidInputError(f"{name} is on {x.device} but the inputs are on {ref.device}")
    if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise InvalidInputError(f"{name} must have shape {want}, got {list(x.shape)}")


def check_qkv(q, k, v, token: bool = False, names: tuple[str, str, str] = ("q", "k", "v")) -> tuple[int, ...]:
    """q, k: [B, T, H, K] and v: [B, T, H, V] (one token, `token=True`: no T axis).

    Returns (B, T, H, K, V), or (B, H, K, V) for one token."""
    nq, nk, nv = names
    check_tensor(nq, q, (None,) * (3 if token else 4), q)
    check_tensor(nk, k, tuple(q.shape), q)
    check_tensor(nv, v, (*q.shape[:-1], None), q)
    if not token and q.shape[1] == 0:
        raise InvalidInputError(f"{nq}, {nk}, {nv} must hold at least one time step (T >= 1), got T = 0")
    return (*q.shape, v.shape[-1])


def check_cu_seqlens(cu_seqlens, B: int, T: int) -> int:
    """Offsets [N + 1] of N packed sequences into a batch of one; returns the number of sequences N
    (B when `cu_seqlens` is None)."""
    import torch

    if cu_seqlens is None:
        return B
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise InvalidInputError("cu_seqlens must be an int32/int64 tensor of offsets [N + 1]")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise InvalidInputError(f"cu_seqlens must be 1-D with at least 2 offsets, got {list(cu_seqlens.shape)}")
    if B != 1:
        raise InvalidInputError(f"packed sequences (cu_seqlens) need batch size B = 1, got B = {B}")
    if values_readable(cu_seqlens):
        offsets = cu_seqlens.tolist()
        if offsets[0] != 0 or offsets[-1] != T or any(b <= a for a, b in zip(offsets, offsets[1:], strict=False)):
            raise InvalidInputError(
                f"cu_seqlens must rise strictly from 0 to T = {T} (no empty sequences), got {offsets}"
            )
    return cu_seqlens.numel() - 1


def diagonal_backend(backend: str) -> str:
    """The backend of an op with a vector state (common/diagonal_scan.py): "naive" (the reference loop)
    or the parallel scan, which runs on any device; every other name in BACKENDS selects the scan, so a
    model configured for Triton still runs these ops (they have no Triton form)."""
    if backend not in BACKENDS:
        raise InvalidInputError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return "naive" if backend == "naive" else "scan"


def check_state(name: str, state, N: int, H: int, K: int, V: int, ref) -> None:
    if state is not None:
        check_tensor(name, state, (N, H, K, V), ref)


def check_range(name: str, x, low: float, high: float, low_open: bool = True) -> None:
    """Every entry of a small per-head tensor lies in (low, high] (or [low, high] if not `low_open`);
    checked where `values_readable(x)`."""
    if not values_readable(x):
        return
    bad = ((x <= low) if low_open else (x < low)) | (x > high)
    if bool(bad.any()):
        rng = f"{'(' if low_open else '['}{low}, {high}]"
        raise InvalidInputError(f"{name} must lie in {rng}, got {x.detach().flatten().tolist()}")
