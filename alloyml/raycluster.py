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
import re
import time
from typing import Literal

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9][A-Za-z0-9.-]*):([0-9]{1,5})$")
AddressKind = Literal["client", "jobs", "gcs"]
CLIENT_CONNECT_ATTEMPTS = 3


def address_kind(address: str, source: str = "--address") -> AddressKind:
    """What a cluster address names, checked before anything connects: `ray://HOST:PORT` (Ray Client: this
    process drives, the cluster runs the steps), `http(s)://HOST:PORT` (Ray Jobs API: the cluster runs the
    driver too), `HOST:PORT` or `auto` (join the cluster's GCS from one of its own machines).

    A token or password never goes in the address: Ray reads its token from `RAY_AUTH_TOKEN` (or the file
    `RAY_AUTH_TOKEN_PATH`, default `~/.ray/auth_token`), so the address may be printed and stored.
    """
    from alloyml.errors import ConfigError

    expected = "expected ray://HOST:10001 (Ray Client), http://HOST:8265 (Ray Jobs API), HOST:PORT or auto"
    if not isinstance(address, str) or not address.strip():
        raise ConfigError(f"{source} is empty; {expected}")
    if address == "auto":
        return "gcs"
    scheme, sep, rest = address.partition("://")
    if sep and scheme not in ("ray", "http", "https"):
        raise ConfigError(f"{source} {address!r} has scheme {scheme!r}; {expected}")
    netloc = rest.split("/", 1)[0] if sep else address
    if "@" in netloc or "?" in address:
        scheme_shown = f"{scheme}://" if sep else ""
        raise ConfigError(f"{source} ({scheme_shown}...) carries credentials or a query; give Ray's token through "
                          "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) in the environment instead")
    if sep and scheme == "ray" and rest != netloc:
        raise ConfigError(f"{source} {address!r}: a Ray Client address has no path; {expected}")
    if not sep and netloc != address:
        raise ConfigError(f"{source} {address!r} is not HOST:PORT; {expected}")
    if sep and scheme != "ray" and ":" not in netloc.strip("[]"):
        netloc += ":443" if scheme == "https" else ":80"  # a Jobs API behind a proxy may use the default port
    match = _HOST_PORT.match(netloc)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ConfigError(f"{source} {address!r} does not name HOST:PORT with a port in 1..65535; {expected}")
    return {"ray": "client", "http": "jobs", "https": "jobs"}[scheme] if sep else "gcs"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Make sure this process is connected to Ray; cheap when it already is. Joins `address`, else
    ALLOYML_RAY_ADDRESS, else RAY_ADDRESS, else starts a local Ray."""
    # RAY_ADDRESS: what Ray gives the driver of a job submitted through the Jobs API.
    address = address or os.environ.get("ALLOYML_RAY_ADDRESS") or os.environ.get("RAY_ADDRESS") or None
    if address is not None and address_kind(address, "ALLOYML_RAY_ADDRESS") == "jobs":
        from alloyml.errors import ConfigError

        raise ConfigError(f"ALLOYML_RAY_ADDRESS {address!r} is a Ray Jobs API address; a process joins a cluster "
                          "through ray://HOST:10001 or HOST:PORT (submit jobs with `alloyml workflow run "
                          "--address http://HOST:8265`)")
    if address is None or address.split(":")[0] in _LOOPBACK_HOSTS:
        _keep_ray_on_loopback()
    import ray

    if ray.is_initialized():
        return
    if address:
        attempts = CLIENT_CONNECT_ATTEMPTS if address.startswith("ray://") else 1
        for attempt in range(1, attempts + 1):
            try:
                ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
                return
            except ConnectionError:
                # Ray Client's proxy starts one server process per client; the first start on a fresh head
                # sometimes dies before it answers ("Starting Ray client server failed"); the next one works.
                if attempt == attempts:
                    raise
                time.sleep(2.0 * attempt)
    ray.init(
        # "local": always a new Ray of this process's own; with no address Ray would join whatever cluster
        # /tmp/ray/ray_current_cluster names (the last `ray start` on this machine, by anyone).
        address="local",
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
