"""Compile Triton kernels for a GPU on a machine without one: record each launch a Python wrapper makes,
then compile that exact specialisation ahead of time for an H100 (sm_90) down to a cubin.

The interpreter (TRITON_INTERPRET=1) checks what a kernel computes but accepts code a GPU compiler
rejects (tl.dot below 16, shape mismatches in layouts, too much shared memory for a block size). Compiling
every specialisation the wrappers launch catches those here, in CI, without a GPU.

Used by test_triton_compile.py (imported as a plain module: pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

H100 = ("cuda", 90, 32)  # backend, compute capability, warp size
H100_SHARED_MEMORY = 227 * 1024  # bytes one block may use (the opt-in maximum on sm_90)

_POINTER_TYPES = {
    torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float64: "*fp64",
    torch.int64: "*i64", torch.int32: "*i32", torch.bool: "*i1",
}


@dataclass
class Launch:
    """One recorded launch: the kernel and its arguments by name."""

    kernel: object  # a triton JITFunction
    args: dict

    def signature(self) -> tuple[dict, dict]:
        """(Triton signature by argument name, constexpr values keyed by argument position)."""
        signature, constexprs = {}, {}
        for index, param in enumerate(self.kernel.params):
            value = self.args[param.name]
            if param.is_constexpr or value is None:
                signature[param.name] = "constexpr"
                constexprs[(index,)] = value
            elif isinstance(value, torch.Tensor):
                signature[param.name] = _POINTER_TYPES[value.dtype]
            elif isinstance(value, bool):
                signature[param.name] = "i1"
            elif isinstance(value, int):
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            elif isinstance(value, float):
                signature[param.name] = "fp32"
            else:
                raise TypeError(f"{self.kernel.__name__}: cannot type argument {param.name}={value!r}")
        return signature, constexprs

    def compile(self, target=H100):
        """Compile down to a cubin; raises triton's CompilationError (or the PTX assembler's error)."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        signature, constexprs = self.signature()
        source = ASTSource(fn=self.kernel, signature=signature, constexprs=constexprs)
        options = {key: self.args[key] for key in ("num_warps", "num_stages") if key in self.args}
        return triton.compile(source, target=GPUTarget(*target), options=options)

    def key(self) -> tuple:
        signature, constexprs = self.signature()
        return (self.kernel.__name__, tuple(signature.items()), tuple(sorted(constexprs.items(), key=str)))


@contextlib.contextmanager
def recording(*kernels):
    """Within the block, `kernel[grid](...)` records a Launch instead of running; yields the list."""
    launches: list[Launch] = []
    saved = []
    for kernel in kernels:
        def run(*args, grid, warmup, _kernel=kernel, **kwargs):
            named = dict(zip(_kernel.arg_names, args, strict=False)) | kwargs
            launches.append(Launch(_kernel, named))

        saved.append((kernel, kernel.__dict__.get("run")))
        kernel.run = run
    try:
        yield launches
    finally:
        for kernel, original in saved:
            if original is None:
                del kernel.run
            else:
                kernel.run = original


def jit_functions(module) -> list:
    """The module's @triton.jit kernels (those launched with a grid)."""
    from triton.runtime.jit import JITFunction

    return [obj for obj in vars(module).values() if isinstance(obj, JITFunction)]
