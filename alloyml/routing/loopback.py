"""Keep the Serve replicas' own gRPC servers on 127.0.0.1.

Ray Serve (2.x) starts, in every replica, an inter-deployment gRPC server bound to `[::]:0` (hard-coded
in `ray.serve._private.replica`, no setting changes it), so each stage and ingress replica listens on
every interface. Our deployments call `bind_replica_grpc_to_loopback()` first thing in their
constructor, which Serve runs before it starts that server: the server then binds `127.0.0.1:0`.
Calls between deployments in one node do not go through it unless Serve's gRPC transport is switched
on, and then the loopback address is the node's own. If Ray's internals change and the hook is no
longer there, nothing is patched and the function says so; tests/routing check every listener.
"""

from __future__ import annotations

_MARK = "_alloyml_loopback"


def bind_replica_grpc_to_loopback() -> bool:
    """Patch this replica process so its inter-deployment gRPC server binds loopback; True if patched."""
    try:
        from ray.serve._private import replica
    except ImportError:
        return False
    original = getattr(replica, "add_port_to_grpc_server", None)
    if original is None:
        return False
    if getattr(original, _MARK, False):
        return True

    def on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return original(server, address)

    setattr(on_loopback, _MARK, True)
    replica.add_port_to_grpc_server = on_loopback
    return True
