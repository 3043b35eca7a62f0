"""Workflow definition, stored form, safe output encoding, and the store's lease/cancel primitives — no Ray."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from alloyml.errors import InvalidInputError
from alloyml.workflows import Input, Workflow, cancel, step
from alloyml.workflows.codec import UnsafeValueError, decode, encode
from alloyml.workflows.steps import resolve_step
from tests.workflows import steps_for_tests as steps


def diamond(log: str) -> Workflow:
    wf = Workflow("diamond")
    a = wf.add(steps.load, n=Input("n"), log=log)
    b = wf.add(steps.scale, x=a, factor=2.0, log=log, tag="b")
    c = wf.add(steps.scale, x=a, factor=3.0, log=log, tag="c")
    wf.add(steps.total, a=b, b=c, log=log)
    return wf


def test_spec_round_trip_keeps_graph_and_options(log):
    wf = diamond(log)
    rebuilt = Workflow.from_spec("diamond", wf.to_spec())
    assert rebuilt.to_spec() == wf.to_spec()
    assert list(rebuilt.nodes) == ["load", "scale", "scale_2", "total"]
    assert rebuilt.nodes["total"].depends_on == ["scale", "scale_2"]
    assert rebuilt.output_step == "total" and rebuilt.inputs == {"n"}
    assert wf.step_rows()[1] == {"name": "scale", "depends_on": ["load"],
                                 "resources": {"num_cpus": 1.0, "num_gpus": 0.0, "memory": None, "resources": {}}}
    assert steps.flaky.options.max_retries == 2
    assert steps.on_special.options.ray_options()["resources"] == {"special": 1}


def test_bad_definitions_fail_early(log):
    wf = diamond(log)
    with pytest.raises(InvalidInputError, match="missing \\['n'\\]"):
        wf.check_inputs({})
    with pytest.raises(InvalidInputError, match="unexpected \\['m'\\]"):
        wf.check_inputs({"n": 3, "m": 1})
    with pytest.raises(InvalidInputError, match="not a step"):
        wf.add(len, x=1)
    with pytest.raises(InvalidInputError, match="not JSON-able"):
        wf.add(steps.load, n=np.zeros(3), log=log)
    with pytest.raises(InvalidInputError, match="already has a step named 'load'"):
        wf.add(steps.load, name="load", n=1, log=log)

    @step
    def local(x):
        return x

    with pytest.raises(InvalidInputError, match="inside a function"):
        wf.add(local, x=1)
    with pytest.raises(InvalidInputError, match="not a function decorated with @step"):
        resolve_step("os:system")
    with pytest.raises(InvalidInputError, match="cannot import step"):
        resolve_step("tests.workflows.steps_for_tests:missing")
    with pytest.raises(Exception, match="max_retries"):
        step(max_retries=-1)


@dataclasses.dataclass
class _Outside:
    x: int


def test_codec_round_trips_safe_values_and_refuses_others(tmp_path):
    from alloyml.platform.artifacts import ArtifactStore
    from alloyml.platform.store import WorkflowLease  # an alloyml dataclass

    store = ArtifactStore(tmp_path)
    value = {"a": np.arange(6, dtype=np.int32).reshape(2, 3), "t": torch.linspace(0, 1, 5),
             "pair": (1, "x"), "nan": math.nan, "n": np.float32(0.5), "nested": [{"k": None}],
             "lease": WorkflowLease("h:1:t", None)}
    tree = encode(value, store)
    back = decode(tree, store)
    np.testing.assert_array_equal(back["a"], value["a"])
    assert back["a"].dtype == np.int32
    torch.testing.assert_close(back["t"], value["t"])
    assert back["pair"] == (1, "x") and math.isnan(back["nan"]) and back["n"] == 0.5
    assert back["nested"] == [{"k": None}] and back["lease"] == value["lease"]
    # every artifact is a safe format: .npy without pickle, safetensors, JSON
    assert {p.suffix for p in tmp_path.rglob("*.*")} == {".npy", ".safetensors"}
    for bad in (object(), np.array([object()]), {1: 2}, {"__array__": 1}, _Outside(1)):
        with pytest.raises(UnsafeValueError):
            encode(bad, store)
    with pytest.raises(InvalidInputError, match="only alloyml dataclasses"):
        decode({"__dataclass__": "os:system", "fields": {}}, store)


def test_lease_compare_and_swap_and_cancel_without_driver(platform, log):
    store = platform.store
    wf = diamond(log)
    record = store.create_workflow(wf.name, {"n": 3}, wf.to_spec(), wf.step_rows())
    assert store.workflow_lease(record.id).driver is None
    assert store.claim_workflow(record.id, "h:1:a", expected=None)
    assert not store.claim_workflow(record.id, "h:2:b", expected=None)  # held by a
    assert store.heartbeat_workflow(record.id, "h:1:a") and not store.heartbeat_workflow(record.id, "h:2:b")
    assert store.claim_workflow(record.id, "h:2:b", expected="h:1:a")  # take-over from a
    assert store.workflow_lease(record.id).driver == "h:2:b"
    assert store.claim_workflow(record.id, None, expected="h:2:b")
    # no driver holds it: cancel settles it on the spot
    store.update_step(record.id, "load", state="done", output_artifact=None)
    assert cancel(record.id, platform) == "cancelled"
    states = {s.name: s.state for s in store.workflow_steps(record.id)}
    assert states == {"load": "done", "scale": "cancelled", "scale_2": "cancelled", "total": "cancelled"}
    assert cancel(record.id, platform) == "cancelled"


def test_a_stored_reference_does_not_import_a_module_that_defines_no_such_step(tmp_path, monkeypatch):
    """Importing runs a module's code: a tampered spec naming any importable module must not get that far."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "alloy_side_effect_mod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n\ndef fn():\n    return 1\n")
    (tmp_path / "alloy_real_steps_mod.py").write_text(
        "from alloyml.workflows import step\n\n\n@step(num_cpus=1)\ndef real(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(InvalidInputError, match="defines no step named 'fn'"):
        resolve_step("alloy_side_effect_mod:fn")
    assert not marker.exists()  # refused before the module ran
    assert resolve_step("alloy_real_steps_mod:real")(3) == 3  # a module that defines the step is imported
    with pytest.raises(InvalidInputError, match="no Python source|cannot import"):
        resolve_step("no_such_module_alloyml:fn")
