"""A workflow driven in this process keeps the artifact location of the Platform it was submitted with
(here an S3 bucket on the moto server, while ALLOYML_ARTIFACTS is unset): step outputs and the result go
to that bucket, nothing to the home's local artifact folder, and `result()` reads them back."""

from __future__ import annotations

import numpy as np
import pytest

from alloyml.platform.client import Platform
from alloyml.workflows import Workflow, submit
from tests.workflows import steps_for_tests as steps

pytestmark = pytest.mark.ray


def test_driver_writes_to_the_callers_object_store(s3_artifacts, alloy_home, tmp_path, monkeypatch, ray_session):
    monkeypatch.delenv("ALLOYML_ARTIFACTS", raising=False)
    log = str(tmp_path / "log.txt")
    workflow = Workflow("on-s3")
    x = workflow.add(steps.load, n=5, log=log)
    workflow.add(steps.scale, x=x, factor=3.0, log=log, tag="scaled")
    with Platform(upgrade=True, artifacts=s3_artifacts) as platform:
        handle = submit(platform, workflow)
        result = handle.result(timeout=120)
        keys = [s.output_artifact for s in handle.steps()] + [platform.store.get_workflow(handle.id).result_artifact]
        assert platform.artifacts.url == s3_artifacts and all(platform.artifacts.exists(k) for k in keys)
    np.testing.assert_array_equal(result, 3.0 * np.arange(5))
    assert not (alloy_home / "artifacts").exists()
