"""`alloyml merge` run as a program ends without interpreter teardown: the output must still be whole and
the process's own output and atexit handlers must not be lost."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml
from merge_helpers import load_state, perturbed, small_state
from safetensors.torch import save_file

# The program as the console script runs it, plus an atexit hook standing in for a library's.
PROGRAM = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('atexit hook ran', flush=True))\n"
    "from alloyml.cli import main\n"
    "code = main()\n"
    "print('teardown reached', flush=True)\n"
    "sys.exit(code)\n"
)


def _run(argv, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-c", PROGRAM, *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)  # fmt: skip


def test_merge_program_skips_teardown_but_keeps_output_and_atexit(tmp_path):
    states = {"base": small_state(0), "a": perturbed(small_state(0), 0.1, 1), "b": perturbed(small_state(0), 0.1, 2)}
    for name, state in states.items():
        (tmp_path / name).mkdir()
        save_file(state, tmp_path / name / "model.safetensors")
    config = {
        "merge_method": "task_arithmetic",
        "base_model": str(tmp_path / "base"),
        "models": [{"model": str(tmp_path / m), "parameters": {"weight": w}} for m, w in (("a", 0.7), ("b", -0.3))],
    }
    (tmp_path / "ta.yaml").write_text(yaml.safe_dump(config))
    done = _run(["merge", str(tmp_path / "ta.yaml"), str(tmp_path / "out")], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "task_arithmetic (alloyml)" in done.stdout  # printed before the exit, and flushed
    assert "atexit hook ran" in done.stdout
    assert "teardown reached" not in done.stdout  # main() ended the process itself
    merged = load_state(tmp_path / "out")
    base, a, b = states["base"], states["a"], states["b"]
    for name, value in base.items():  # base + sum_i w_i (x_i - base), computed here in float64
        if value.is_floating_point():
            expected = (
                base[name].double()
                + 0.7 * (a[name].double() - base[name].double())
                - 0.3 * (b[name].double() - base[name].double())
            )
            torch.testing.assert_close(merged[name].double(), expected, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(merged[name], value), name


def test_failed_merge_exits_normally_with_its_error(tmp_path):
    (tmp_path / "bad.yaml").write_text("merge_method: no_such_method\nmodels: []\n")
    done = _run(["merge", str(tmp_path / "bad.yaml"), str(tmp_path / "out")], tmp_path)
    assert done.returncode == 2
    assert "alloyml: error:" in done.stderr
    assert "teardown reached" in done.stdout and "atexit hook ran" in done.stdout
    assert not (tmp_path / "out").exists()
