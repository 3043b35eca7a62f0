"""Start or join Ray once per process.

Libraries that parallelise (valuation sampling, merge search, tuning) call `ensure_ray()`; it reuses a
running Ray, joins `ALLOYML_RAY_ADDRESS` when set, and otherwise starts a local one bound to 127.0.0.1.
Kept outside `platform` so libraries can use it without depending on the store.

Why the loopback switch: Ray rewrites "127.0.0.1" (as `_node_ip_address` or as the host of an address) to
the machine's outward-facing IP unless its multi-node mode is off, so a plain `ray.init()` would listen on
that interface. Turning it off (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read by Ray at import time, plus
the already-imported constant) keeps the GCS, raylet and workers on 127.0.0.1. It is applied only for a
local Ray and for addresses on the loopback interface; a remote cluster address is left alone.
"""

from __future__ import annotations

import os

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Make sure this process is connected to Ray; cheap when it already is."""
    address = address or os.environ.get("ALLOYML_RAY_ADDRESS") or None
    if address is None or address.split(":")[0] in _LOOPBACK_HOSTS:
        _keep_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        return
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        ignore_reinit_error=True,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        configure_logging=False,
    )


def _keep_ray_on_loopback() -> None:
    # The env var reaches the raylet and workers this process spawns; the constant covers a `ray` that
    # was imported before this call.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")
