"""The Redis-backed registry shared by every replica of a deployment, and its one key schema.

It owns the keys below and nothing else; snapshot bytes live in the snapshot store. `{ns}` is the
namespace (default "logit"); pass a hash-tagged namespace such as "{logit}" to run on Redis Cluster,
so the multi-key scripts touch one slot.

Run Redis with persistence (an append-only file, as deploy/ does). Without it a restarted Redis is empty
and the replicas rebuild it: their scans re-register the snapshot directories, leases survive as files
beside the snapshots (the store writes both), and the EWMA record is re-registered from its snapshot.

    {ns}:version:{v}   HASH    policy_version, snapshot_path, digest, model_config_hash, dtype,
                               created_at (float repr), state ("retained"|"evicted"),
                               covers_versions (JSON list of ints). Never deleted: an evicted
                               version keeps its record so callers can tell evicted from unknown.
    {ns}:versions      ZSET    member = score = v; ascending order is version order.
    {ns}:latest        STRING  the highest published v; only ever moves up.
    {ns}:ewma          HASH    the EWMA pseudo-version, same fields as a version hash.
    {ns}:replica:{id}  STRING  JSON of a ReplicaRecord, with a PX TTL: the replica's lease.
    {ns}:replicas      SET     replica ids; ids whose lease key has expired are removed lazily.
    {ns}:lease:{v}     ZSET    member = holder, score = expiry in ms on the Redis server's clock
                               (TIME), so replicas on hosts with skewed clocks agree.
    {ns}:leased        SET     versions with a lease key; cleaned lazily when their leases lapse.
    {ns}:events        pub/sub channel; a new version announces {"event":"published","policy_version":v}.
                       Pub/sub drops messages while a subscriber is disconnected, so events are
                       hints: resync from {ns}:versions after (re)connecting.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator

import redis

from logit_common.replicas import decode_replica as _decode_replica
from logit_common.replicas import encode_replica as _encode_replica
from logit_common.replicas import replica_key
from logit_service.errors import RegistryError, VersionConflict
from logit_service.registry.base import holder_limit
from logit_service.types import ReplicaRecord, VersionRecord, VersionState

REDIS_TIMEOUT_S = 5.0

# One script, so a reader never sees a version in the zset without its hash, and two publishers of
# the same version cannot both win. Returns {1} new, {0} same digest already there, {-1, digest} clash.
_PUBLISH_LUA = """
local stored = redis.call('HGET', KEYS[1], 'digest')
if stored then
  if stored == ARGV[2] then return {0} end
  return {-1, stored}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
local latest = redis.call('GET', KEYS[3])
if (not latest) or tonumber(latest) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[3], ARGV[1])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return {1}
"""

# A script rather than MULTI, because HSET on a missing key would invent a partial record.
_EVICT_LUA = """
for _, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then redis.call('HSET', key, 'state', ARGV[1]) end
end
return 0
"""

# Drops an id only if its lease is still gone, so a heartbeat landing between our read and this
# cleanup is not lost.
_FORGET_EXPIRED_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then return redis.call('SREM', KEYS[1], ARGV[1]) end
return 0
"""


# Leases are timed on the Redis server's clock, never the caller's. A new holder beyond ARGV[4] live
# holders is refused (-1), checked and added atomically; the key lives as long as its longest lease.
_LEASE_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
local max_holders = tonumber(ARGV[4])
if max_holders > 0 and not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= max_holders then
  return -1
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[2]), ARGV[1])
local keep = tonumber(ARGV[2]) + 1000
if redis.call('PTTL', KEYS[1]) < keep then redis.call('PEXPIRE', KEYS[1], keep) end
redis.call('SADD', KEYS[2], ARGV[3])
return 0
"""

# Drops lapsed holders and versions; returns {v1, ms_left1, v2, ms_left2, ...} for live ones.
_LEASED_LUA = """
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, v in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = ARGV[1] .. v
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if #last == 0 then
    redis.call('SREM', KEYS[1], v)
  else
    table.insert(out, v)
    table.insert(out, tostring(tonumber(last[2]) - now_ms))
  end
end
return out
"""


def redact_url(url: str) -> str:
    """The URL with credentials (user info and a `password` query parameter) masked, for messages."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = urllib.parse.urlencode([(k, "***" if k == "password" else v) for k, v in params], safe="*")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _encode_version(record: VersionRecord) -> dict[str, str]:
    return {
        "policy_version": str(int(record.policy_version)),
        "snapshot_path": record.snapshot_path,
        "digest": record.digest,
        "model_config_hash": record.model_config_hash,
        "dtype": record.dtype,
        "created_at": repr(float(record.created_at)),  # repr round-trips a float exactly
        "state": VersionState(record.state).value,
        "covers_versions": json.dumps([int(v) for v in record.covers_versions]),
    }


def _decode_version(key: str, fields: dict[str, str]) -> VersionRecord:
    try:
        return VersionRecord(
            policy_version=int(fields["policy_version"]),
            snapshot_path=fields["snapshot_path"],
            digest=fields["digest"],
            model_config_hash=fields["model_config_hash"],
            dtype=fields["dtype"],
            created_at=float(fields["created_at"]),
            state=VersionState(fields["state"]),
            covers_versions=tuple(int(v) for v in json.loads(fields["covers_versions"])),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise RegistryError(f"malformed version record at Redis key {key!r}: {exc!r}") from exc


class RedisRegistry:
    """A `Registry` on one Redis database; every instance with the same URL and namespace shares it.

    `client`, when given, must use decode_responses=True and stays owned by the caller; `url` then only
    names the server in error messages.
    """

    def __init__(self, url: str, namespace: str = "logit", client: redis.Redis | None = None) -> None:
        if not namespace:
            raise ValueError("registry namespace must be non-empty")
        self._safe_url = redact_url(url)
        self._owns_client = client is None
        # Bounded socket waits: a hung Redis must turn into UNAVAILABLE, not a request stuck forever.
        self._client = client if client is not None else redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        if not self._client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisRegistry needs a client created with decode_responses=True")
        self._ns = namespace
        self._publish_script = self._client.register_script(_PUBLISH_LUA)
        self._evict_script = self._client.register_script(_EVICT_LUA)
        self._forget_script = self._client.register_script(_FORGET_EXPIRED_LUA)
        self._lease_script = self._client.register_script(_LEASE_LUA)
        self._leased_script = self._client.register_script(_LEASED_LUA)
        # Fail at startup, not on the first request, when the URL is wrong or Redis is down.
        try:
            with self._translate("connecting"):
                self._client.ping()
        except RegistryError:
            self.close()
            raise

    @property
    def events_channel(self) -> str:
        """The pub/sub channel announcing newly published versions."""
        return f"{self._ns}:events"

    def _version_key(self, policy_version: int) -> str:
        return f"{self._ns}:version:{int(policy_version)}"

    def _replica_key(self, replica_id: str) -> str:
        return replica_key(self._ns, replica_id)

    @contextlib.contextmanager
    def _translate(self, action: str) -> Iterator[None]:
        """Turns redis-py failures into `RegistryError`, naming the (redacted) URL."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise RegistryError(
                f"Redis registry at {self._safe_url} is unreachable while {action}: {exc}"
            ) from exc
        except redis.exceptions.RedisError as exc:
            raise RegistryError(f"Redis registry at {self._safe_url} failed while {action}: {exc}") from exc

    def publish(self, record: VersionRecord) -> bool:
        v = int(record.policy_version)
        fields = [item for pair in _encode_version(record).items() for item in pair]
        event = json.dumps({"event": "published", "policy_version": v})
        with self._translate(f"publishing policy_version {v}"):
            result = self._publish_script(
                keys=[self._version_key(v), f"{self._ns}:versions", f"{self._ns}:latest"],
                args=[v, record.digest, self.events_channel, event, *fields],
            )
        if result[0] == -1:
            raise VersionConflict(
                f"policy_version {v} is already published with digest {result[1]}; refusing digest {record.digest}"
            )
        return result[0] == 1

    def get(self, policy_version: int) -> VersionRecord | None:
        key = self._version_key(policy_version)
        with self._translate(f"reading policy_version {policy_version}"):
            fields = self._client.hgetall(key)
        return _decode_version(key, fields) if fields else None

    def list(self, include_evicted: bool = False) -> list[VersionRecord]:
        with self._translate("listing versions"):
            keys = [self._version_key(int(m)) for m in self._client.zrange(f"{self._ns}:versions", 0, -1)]
            with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                rows = pipe.execute() if keys else []
        records = [_decode_version(key, fields) for key, fields in zip(keys, rows)]
        if include_evicted:
            return records
        return [r for r in records if r.state is not VersionState.EVICTED]

    def latest(self) -> int | None:
        with self._translate("reading the latest version"):
            value = self._client.get(f"{self._ns}:latest")
        return None if value is None else int(value)

    def mark_evicted(self, policy_versions: list[int]) -> None:
        if not policy_versions:
            return
        with self._translate(f"evicting policy_versions {policy_versions}"):
            self._evict_script(
                keys=[self._version_key(v) for v in policy_versions], args=[VersionState.EVICTED.value]
            )

    def put_ewma(self, record: VersionRecord) -> None:
        key = f"{self._ns}:ewma"
        with self._translate("writing the EWMA record"):
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=_encode_version(record))
                pipe.execute()

    def get_ewma(self) -> VersionRecord | None:
        key = f"{self._ns}:ewma"
        with self._translate("reading the EWMA record"):
            fields = self._client.hgetall(key)
        return _decode_version(key, fields) if fields else None

    def lease(self, policy_version: int, holder: str, ttl_s: float, max_holders: int | None = None) -> None:
        if ttl_s <= 0:
            raise ValueError(f"lease ttl_s must be positive, got {ttl_s}")
        v = int(policy_version)
        with self._translate(f"leasing policy_version {v} for {holder}"):
            outcome = self._lease_script(
                keys=[f"{self._ns}:lease:{v}", f"{self._ns}:leased"],
                args=[holder, max(1, round(ttl_s * 1000)), v, max_holders or 0],
            )
        if int(outcome) < 0:
            raise holder_limit(v, max_holders)

    def release(self, policy_version: int, holder: str) -> None:
        with self._translate(f"releasing policy_version {policy_version} for {holder}"):
            self._client.zrem(f"{self._ns}:lease:{int(policy_version)}", holder)

    def leased_versions(self) -> dict[int, float]:
        with self._translate("listing leased versions"):
            flat = self._leased_script(keys=[f"{self._ns}:leased"], args=[f"{self._ns}:lease:"])
        return {int(flat[i]): float(flat[i + 1]) / 1000.0 for i in range(0, len(flat), 2)}

    def heartbeat(self, replica: ReplicaRecord, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"heartbeat ttl_s must be positive, got {ttl_s}")
        with self._translate(f"heartbeating replica {replica.replica_id}"):
            with self._client.pipeline(transaction=True) as pipe:
                key = self._replica_key(replica.replica_id)
                pipe.set(key, _encode_replica(replica), px=max(1, round(ttl_s * 1000)))
                pipe.sadd(f"{self._ns}:replicas", replica.replica_id)
                pipe.execute()

    def deregister(self, replica_id: str) -> None:
        with self._translate(f"deregistering replica {replica_id}"):
            with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._replica_key(replica_id))
                pipe.srem(f"{self._ns}:replicas", replica_id)
                pipe.execute()

    def replicas(self) -> list[ReplicaRecord]:
        ids_key = f"{self._ns}:replicas"
        with self._translate("listing replicas"):
            ids = sorted(self._client.smembers(ids_key))
            keys = [self._replica_key(i) for i in ids]
            values = self._client.mget(keys) if keys else []
            for replica_id, key, value in zip(ids, keys, values):
                if value is None:
                    self._forget_script(keys=[ids_key, key], args=[replica_id])
        return [_decode_replica(key, value) for key, value in zip(keys, values) if value is not None]

    def close(self) -> None:
        """Closes the connection pool if this registry created it; a passed-in client stays open."""
        if self._owns_client:
            self._client.close()
