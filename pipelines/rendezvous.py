"""torch.distributed's rendezvous for Ray Train, listening on the node's Ray address only.

Ray Train's torch backend (ray.train.torch.TorchConfig) lets rank 0's env:// rendezvous start
torch's TCPStore, which listens on every interface (`::` / 0.0.0.0) whatever MASTER_ADDR says,
and gloo binds whatever address the machine's hostname resolves to. Here rank 0 starts that
store itself, on a socket bound to the address Ray gives its node (127.0.0.1 for a local head:
pipelines/__init__.py; the node's cluster address otherwise), and the env:// rendezvous reuses
it: a multi-tenant TCPStore is shared by port within a process. On a loopback address gloo's
and NCCL's own sockets are pinned to the loopback interface too. The rest is Ray's own setup.
"""
from __future__ import annotations

import datetime
import os
import socket

import psutil
import ray
import torch.distributed as dist
from ray.train.torch import TorchConfig
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

from pipelines.ray_runtime import is_loopback

# rank 0's server, alive as long as its worker: the rendezvous looks it up by port, weakly
_store: dist.TCPStore | None = None


def _host_store(world_size: int, timeout_s: int) -> tuple[str, int]:
    """On rank 0: the rendezvous store on this node's Ray address and a free port."""
    global _store
    addr = ray.util.get_node_ip_address()
    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    sock.bind((addr, 0))
    sock.listen()
    port = sock.getsockname()[1]
    _store = dist.TCPStore(addr, port, world_size, True, datetime.timedelta(seconds=timeout_s),
                           wait_for_workers=False, multi_tenant=True, master_listen_fd=sock.detach())
    return addr, port


def _point_at(addr: str, port: int) -> None:
    """On every rank: env:// rendezvous at addr:port; on loopback, gloo and NCCL there too
    (unless the user named their interfaces)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = addr, str(port)
    if is_loopback(addr):
        lo = next(name for name, addrs in psutil.net_if_addrs().items()
                  if any(a.family in (socket.AF_INET, socket.AF_INET6) and is_loopback(a.address) for a in addrs))
        os.environ.setdefault("GLOO_SOCKET_IFNAME", lo)
        os.environ.setdefault("NCCL_SOCKET_IFNAME", lo)


class _NodeAddressBackend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig):
        """Ray's _TorchBackend.on_start (gloo / NCCL), with rank 0's store started by _host_store."""
        world = len(worker_group)
        addr, port = worker_group.execute_single(0, _host_store, world, backend_config.timeout_s)
        worker_group.execute(_point_at, addr, port)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(
            rank, _setup_torch_process_group, backend=backend_config.backend, world_rank=rank, world_size=world,
            init_method="env://", timeout_s=backend_config.timeout_s) for rank in range(world)])


class NodeAddressTorchConfig(TorchConfig):
    """TorchTrainer(torch_config=NodeAddressTorchConfig()): the rendezvous of this module."""

    @property
    def backend_cls(self):
        return _NodeAddressBackend
