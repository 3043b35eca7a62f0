"""Compile Triton kernels for a GPU on a machine without one: record each launch a Python wrapper makes,
then compile that exact specialisation ahead of time for an H100 (sm_90) down to a cubin.

The interpreter (TRITON_INTERPRET=1) checks what a kernel computes but accepts code a GPU compiler
rejects (tl.dot below 16, shape mismatches in layouts, too much shared memory for a block size). Compiling
every specialisation the wrappers launch catches those here, in CI, without a GPU.

Used by test_triton_compile.py (imported as a plain module: pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

H100 = ("cuda", 90, 32)  # backend, compute capability, warp size
H100_SHARED_MEMORY = 227 * 1024  # bytes one block may use (the opt-in maximum on sm_90)


@dataclass
class Launch:
    """One recorded launch: the kernel and its arguments by name."""

    kernel: object  # a triton JITFunction
    args: dict
    grid: tuple = ()

    def signature(self) -> tuple[dict, dict, dict]:
        """(Triton signature by argument name, constexpr values and divisibility attributes keyed by
        argument position), specialised as a real launch specialises them: Triton's own routine types each
        argument, marks an int that is a multiple of 16 or a tensor whose address is as divisible by 16
        (the hint that lets loads vectorise), and turns an int equal to 1 into a constant."""
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend

        signature, constexprs, attrs = {}, {}, {}
        for index, param in enumerate(self.kernel.params):
            value = self.args[param.name]
            if param.is_constexpr:
                kind, spec = "constexpr", value
            else:
                kind, spec = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize,
                                                    not param.do_not_specialize_on_alignment)
            signature[param.name] = kind
            if kind == "constexpr":
                constexprs[(index,)] = spec
            elif isinstance(spec, str):
                attrs[(index,)] = BaseBackend.parse_attr(spec)
        return signature, constexprs, attrs

    def compile(self, target=H100):
        """Compile down to a cubin; raises triton's CompilationError (or the PTX assembler's error)."""
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        signature, constexprs, attrs = self.signature()
        source = ASTSource(fn=self.kernel, signature=signature, constexprs=constexprs, attrs=attrs)
        options = {key: self.args[key] for key in ("num_warps", "num_stages") if key in self.args}
        return triton.compile(source, target=GPUTarget(*target), options=options)

    def key(self) -> tuple:
        signature, constexprs, attrs = self.signature()
        return (self.kernel.__name__, tuple(signature.items()), tuple(sorted(constexprs.items(), key=str)),
                tuple(sorted(attrs)))


@contextlib.contextmanager
def recording(*kernels):
    """Within the block, `kernel[grid](...)` records a Launch instead of running; yields the list."""
    launches: list[Launch] = []
    saved = []
    for kernel in kernels:
        def run(*args, grid, warmup, _kernel=kernel, **kwargs):
            named = dict(zip(_kernel.arg_names, args, strict=False)) | kwargs
            launches.append(Launch(_kernel, named, tuple(grid)))

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


_MMA = re.compile(r"\b(wgmma\.mma_async|mma)\.sync\.aligned\.(m\d+n\d+k\d+)[.\w]*?\.(bf16|f16|tf32|e4m3|e5m2)\b")
_PTXAS = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads.*?Used (\d+) registers", re.S
)


def usage(compiled) -> dict:
    """What a compiled kernel costs per thread: registers, spill stores / loads and stack (bytes, from ptxas
    -v on its PTX for sm_90a), shared memory per block (bytes), and its matrix instructions: MMA kinds
    as "<instruction> <shape> <operand type>" (empty when the products run as FMA loops) and the count of
    float32 FMAs in the PTX."""
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        run = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                             capture_output=True, text=True, check=True)
    stack, stores, loads, registers = (int(x) for x in _PTXAS.search(run.stdout + run.stderr).groups())
    kinds = sorted({f"{op.split('.')[0]} {shape} {dtype}" for op, shape, dtype in _MMA.findall(ptx)})
    return {"registers": registers, "spill_stores": stores, "spill_loads": loads, "stack": stack,
            "shared": compiled.metadata.shared, "mma": kinds, "fma_f32": ptx.count("fma.rn.f32")}
