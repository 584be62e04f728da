"""Copying a version this replica lacks from a peer replica (FetchVersion), for deployments whose
replicas share no file system.

The copy arrives through the same checks as an upload (`snapshots/incoming.py`) and, when the registry
already names the version, must carry the registered digest. It only places the snapshot in this
replica's directory; registering stays with the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import grpc

from logit_service.errors import LogitServiceError
from logit_service.snapshots.incoming import IncomingSnapshot
from logit_service.snapshots.manifest import MANIFEST_NAME, snapshot_dirname
from logit_service.snapshots.store import SnapshotStore
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)


class PeerFetcher:
    def __init__(
        self,
        store: SnapshotStore,
        peers: Sequence[str],
        *,
        max_bytes: int,
        timeout_s: float,
        credentials: grpc.ChannelCredentials | None = None,
        auth_token: str | None = None,
        max_message_bytes: int = 8 << 20,
    ) -> None:
        if not peers:
            raise ValueError("a peer fetcher needs at least one peer address")
        self.store = store
        self.peers = list(peers)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.credentials = credentials
        self.metadata = (("authorization", f"Bearer {auth_token}"),) if auth_token else None
        self.options = [("grpc.max_receive_message_length", max_message_bytes)]
        self._lock = threading.Lock()  # one copy at a time: two threads asking for a version fetch it once
        self.fetched = 0

    def fetch(self, policy_version: int, expected_digest: str | None = None) -> bool:
        """Copies `policy_version` from the first peer that has it; whether it is in the directory now."""
        final = self.store.root / snapshot_dirname(policy_version)
        with self._lock:
            if (final / MANIFEST_NAME).exists():
                return True
            for peer in self.peers:
                try:
                    self._fetch_from(peer, policy_version, expected_digest)
                except grpc.RpcError as e:
                    log.info("version %d not fetched from %s: %s %s", policy_version, peer, e.code().name, e.details())
                    continue
                except LogitServiceError as e:
                    log.warning("version %d from %s refused: %s", policy_version, peer, e.message)
                    continue
                self.fetched += 1
                log.info("fetched version %d from %s", policy_version, peer)
                return True
        return False

    def _fetch_from(self, peer: str, policy_version: int, expected_digest: str | None) -> None:
        if self.credentials is None:
            channel = grpc.insecure_channel(peer, options=self.options)
        else:
            channel = grpc.secure_channel(peer, self.credentials, options=self.options)
        incoming = IncomingSnapshot(self.store, max_bytes=self.max_bytes)
        try:
            stub = pb_grpc.LogitServiceStub(channel)
            stream = stub.FetchVersion(
                pb.FetchVersionRequest(policy_version=policy_version), timeout=self.timeout_s, metadata=self.metadata
            )
            for message in stream:
                incoming.take(message)
            manifest = incoming.finish()
            if expected_digest is not None and manifest.digest != expected_digest:
                raise LogitServiceError(
                    f"its copy has digest {manifest.digest}, but the registry names {expected_digest}"
                )
            incoming.install()
        finally:
            incoming.discard()
            channel.close()

