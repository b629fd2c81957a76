"""Connecting to Ray: an address (a cluster, `ray job submit`, `auto` for one `ray start` began on
this machine) or a local loopback-only head of our own."""
from __future__ import annotations

import ipaddress
import os
import socket

_dashboard_url: str | None = None

OPEN_LOCAL_HEAD = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"     # set in pipelines/__init__.py (why: there)


def is_loopback(address: str) -> bool:
    """127.0.0.0/8 and ::1, IPv4-mapped ones (::ffff:127.0.0.1) included."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a local server to listen on (Serve's proxy in the
    serve step, the tests' and benchmarks' servers). Another process may take it before it is
    bound: fine on a machine of one's own, which is where it is used."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """ray.init once. A local head listens on 127.0.0.1 only, the dashboard included (the
    environment pipelines/__init__.py sets before ray is imported), and declares at least 4
    logical CPUs: on a 2-core machine, 2 train workers plus Ray Data deadlock otherwise (Ray
    Train cannot start its workers while Ray Data holds the CPUs).

    The local dashboard is not optional: it also serves Ray's state API, which Ray Train's
    placement-group cleaner polls every few seconds; without it every training run logs
    "Failed to query Ray Train Controller actor state" again and again."""
    global _dashboard_url
    import ray
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, log_to_driver=True)
    else:
        _refuse_network_head(ray.util.get_node_ip_address())
        # address="local": a head of our own even when `ray start` left a cluster on this machine,
        # which a bare ray.init() would join (and refuse, num_cpus given); that one is --ray-address auto
        ctx = ray.init(address="local", num_cpus=num_cpus or max(4, os.cpu_count() or 1), include_dashboard=True,
                       dashboard_host="127.0.0.1", log_to_driver=True)
    _dashboard_url = f"http://{ctx.dashboard_url}" if ctx.dashboard_url else None
    return ray


def _refuse_network_head(node_ip: str) -> None:
    """`node_ip` (Ray's address for this machine before ray.init) is where a local head would
    listen: the network, unless ray was imported after pipelines set OPEN_LOCAL_HEAD=0, or the
    user set it to 1 on purpose."""
    if is_loopback(node_ip) or os.environ.get(OPEN_LOCAL_HEAD, "").lower() in ("1", "true"):
        return
    raise RuntimeError(
        f"a local Ray would listen on {node_ip}, reachable from the network: `ray` was imported before "
        f"`pipelines`, which sets {OPEN_LOCAL_HEAD}=0 (loopback only). Import pipelines first, or set "
        f"{OPEN_LOCAL_HEAD}=1 to open the local Ray to the network on purpose")


def bind_serve_replica_to_node_address() -> None:
    """Ray Serve starts each replica's inter-deployment gRPC server on `[::]:0`, every interface,
    with no option to change it (ray-project/ray#64544). Called in the replica's process before
    Serve starts that server (Serve constructs the deployment first), this binds it to the node's
    Ray address instead: 127.0.0.1 on a local head, else the address Serve's routers dial anyway
    (`node_ip:port`). A Ray without that server (before 2.5x) is left as it is."""
    import ray
    from ray.serve._private import replica
    add_port = getattr(replica, "add_port_to_grpc_server", None)
    if add_port is None:
        return
    node_ip = ray.util.get_node_ip_address()
    host = f"[{node_ip}]" if ":" in node_ip else node_ip

    def on_node_address(server, address: str):
        return add_port(server, host + address[len("[::]"):] if address.startswith("[::]:") else address)
    replica.add_port_to_grpc_server = on_node_address


def dashboard_url() -> str | None:
    """The Ray dashboard of the cluster init_ray connected to (None before, or without one)."""
    return _dashboard_url
