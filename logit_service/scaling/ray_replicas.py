"""N service replicas as Ray actors, one server per actor, scaled up and down by count.

Ray only places and supervises the processes: each replica is an ordinary server that registers
itself (address, resident versions) in the shared Redis registry, where clients discover it
(`logit_client.ReplicaRouter`). Replicas share the snapshot directory, which must be storage every node
can read (NFS, a PVC, a parallel filesystem).
"""

from __future__ import annotations

import socket
from typing import Any

import ray

from logit_service.config import ServerConfig

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")


@ray.remote
class ReplicaActor:
    """One replica: a real gRPC server on its own event loop inside the actor process."""

    def __init__(self, config: dict[str, Any], replica_id: str) -> None:
        from logit_service.server.app import ServerThread

        host = config.get("host", "127.0.0.1")
        port = _free_port(host)
        advertise_host = ray.util.get_node_ip_address() if host in _WILDCARD_HOSTS else host
        full = dict(config, port=port, replica_id=replica_id, advertise_address=f"{advertise_host}:{port}")
        self.server = ServerThread(ServerConfig(**full)).start()

    def address(self) -> str:
        assert self.server.running is not None
        return self.server.running.advertised

    def stop(self) -> None:
        self.server.stop()


def _free_port(host: str) -> int:
    # The server binds with SO_REUSEPORT off, so a port taken between here and the bind fails loudly.
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host if host not in _WILDCARD_HOSTS else "", 0))
        return s.getsockname()[1]


class RayReplicaSet:
    def __init__(
        self,
        config: ServerConfig,
        *,
        name_prefix: str = "logit-replica",
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        start_timeout_s: float = 300.0,
    ) -> None:
        if config.redis_url is None:
            raise ValueError("replicas on Ray must share a registry: set redis_url")
        self.config = config
        self.name_prefix = name_prefix
        self.actor_options = {"num_cpus": num_cpus, "num_gpus": num_gpus, "max_restarts": 3}
        self.start_timeout_s = start_timeout_s
        self._actors: dict[str, Any] = {}
        self._addresses: dict[str, str] = {}
        self._next_index = 0

    def scale(self, replicas: int) -> list[str]:
        """Starts or stops replicas (newest first) until `replicas` run; returns their addresses."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        while len(self._actors) > replicas:
            self._stop(list(self._actors)[-1])
        starting = {}
        while len(self._actors) + len(starting) < replicas:
            replica_id = f"{self.name_prefix}-{self._next_index}"
            self._next_index += 1
            config = self.config.model_dump(mode="json", exclude={"port", "replica_id", "advertise_address"})
            starting[replica_id] = ReplicaActor.options(**self.actor_options).remote(config, replica_id)
        if starting:  # start them concurrently, then wait for all
            addresses = ray.get([a.address.remote() for a in starting.values()], timeout=self.start_timeout_s)
            for (replica_id, actor), address in zip(starting.items(), addresses):
                self._actors[replica_id] = actor
                self._addresses[replica_id] = address
        return self.addresses()

    def addresses(self) -> list[str]:
        return [self._addresses[r] for r in self._actors]

    def _stop(self, replica_id: str) -> None:
        actor = self._actors.pop(replica_id)
        self._addresses.pop(replica_id, None)
        try:
            ray.get(actor.stop.remote(), timeout=60)  # graceful: drains and deregisters its lease
        finally:
            ray.kill(actor)

    def shutdown(self) -> None:
        self.scale(0)
