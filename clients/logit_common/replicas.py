"""How a replica advertises itself in a Redis registry: its two keys and the JSON of a ReplicaRecord.

Shared because two sides meet here: the server's RedisRegistry writes these (with the rest of the key
schema, documented in logit_service/registry/redis.py), the client's replica discovery reads them.

    {ns}:replica:{id}  STRING  JSON of a ReplicaRecord, with a PX TTL: the replica's lease.
    {ns}:replicas      SET     replica ids; ids whose lease key has expired are removed lazily.
"""

from __future__ import annotations

import json

from logit_common.errors import RegistryError
from logit_common.types import ReplicaRecord


def replicas_key(namespace: str) -> str:
    return f"{namespace}:replicas"


def replica_key(namespace: str, replica_id: str) -> str:
    return f"{namespace}:replica:{replica_id}"


def encode_replica(replica: ReplicaRecord) -> str:
    return json.dumps(
        {
            "replica_id": replica.replica_id,
            "address": replica.address,
            "resident_versions": [int(v) for v in replica.resident_versions],
            "backend": replica.backend,
            "started_at": float(replica.started_at),
        }
    )


def decode_replica(key: str, value: str) -> ReplicaRecord:
    try:
        fields = json.loads(value)
        return ReplicaRecord(
            replica_id=str(fields["replica_id"]),
            address=str(fields["address"]),
            resident_versions=tuple(int(v) for v in fields["resident_versions"]),
            backend=str(fields["backend"]),
            started_at=float(fields["started_at"]),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise RegistryError(f"malformed replica record at Redis key {key!r}: {exc!r}") from exc
