"""`--address` of `alloyml workflow run/resume` is checked before anything connects: the kinds of address,
the refusal of credentials in it (never echoed), @file inputs that cannot reach a Jobs API driver, and an
unreachable Jobs API named in one line. No Ray is started by any of these."""

from __future__ import annotations

import socket

import pytest

from alloyml.cli import main
from alloyml.errors import ConfigError
from alloyml.raycluster import address_kind


@pytest.mark.parametrize(("address", "kind"), [
    ("ray://head.example:10001", "client"), ("http://127.0.0.1:8265", "jobs"), ("https://ray.example/proxy", "jobs"),
    ("10.0.0.5:6379", "gcs"), ("auto", "gcs"), ("[::1]:6379", "gcs"),
])
def test_address_kinds(address, kind):
    assert address_kind(address) == kind


@pytest.mark.parametrize(("address", "expected"), [
    ("ray://admin:s3cr3t-value@head:10001", "carries credentials"),
    ("http://head:8265?token=s3cr3t-value", "carries credentials"),
    ("grpc://head:10001", "has scheme 'grpc'"),
    ("ray://head", "HOST:PORT"),
    ("head:70000", "port in 1..65535"),
    ("ray://head:10001/path", "no path"),
    ("", "is empty"),
])
def test_bad_addresses_are_refused_by_name_without_echoing_secrets(address, expected, alloy_home, capsys):
    import ray

    ray_before = ray.is_initialized()  # the suite's session Ray may be up already
    code = main(["workflow", "run", "valuation", "--address", address, "--input=x_train=[[0]]"])
    err = capsys.readouterr().err
    assert code == 2 and "--address" in err and expected in err, err
    assert "s3cr3t-value" not in err
    assert ray.is_initialized() == ray_before  # refused before any Ray was started or joined
    with pytest.raises(ConfigError, match="ALLOYML_RAY_ADDRESS"):
        address_kind(address, "ALLOYML_RAY_ADDRESS")


def test_jobs_address_refuses_local_files_and_resume(alloy_home, tmp_path, capsys):
    code = main(["workflow", "run", "valuation", "--address", "http://127.0.0.1:8265",
                 *(f"--input={n}=@{tmp_path / 'x.npy'}" for n in ("x_train", "y_train")),
                 *(f"--input={n}=1" for n in ("x_test", "y_test", "method", "samples", "seed", "flipped"))])
    err = capsys.readouterr().err
    assert code == 2 and "--input x_train, y_train" in err and "Jobs API" in err, err
    code = main(["workflow", "run", "valuation", "--address", "http://127.0.0.1:8265", "--input=x_train=1"])
    assert code == 2 and "missing" in capsys.readouterr().err  # inputs are checked before any job
    assert main(["workflow", "resume", "1", "--address", "http://127.0.0.1:8265"]) == 2
    assert "Jobs API address" in capsys.readouterr().err


def test_unreachable_jobs_api_is_one_line_naming_it(alloy_home, capsys):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    inputs = [f"--input={n}={v}" for n, v in (("x_train", "[[0.0]]"), ("y_train", "[0]"), ("x_test", "[[0.0]]"),
                                              ("y_test", "[0]"), ("method", "knn_shapley"), ("samples", "1"),
                                              ("seed", "0"), ("flipped", "null"))]
    code = main(["workflow", "run", "valuation", "--address", f"http://127.0.0.1:{port}", *inputs])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot reach the Ray Jobs API at http://127.0.0.1:{port}" in err, err
