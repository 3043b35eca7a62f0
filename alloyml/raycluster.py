"""Start or join Ray once per process.

Libraries that parallelise (valuation sampling, merge search, tuning) call `ensure_ray()`; it reuses a
running Ray, joins `ALLOYML_RAY_ADDRESS` when set, and otherwise starts a local one bound to 127.0.0.1.
Kept outside `platform` so libraries can use it without depending on the store.
"""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Make sure this process is connected to Ray; cheap when it already is."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("ALLOYML_RAY_ADDRESS") or None
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
