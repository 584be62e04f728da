"""SnapshotStore: publishing, the retention window, verified loading, directory scans; and the RAM LRU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from logit_service.demo.tiny_model import build_tiny_model
from logit_service.errors import (
    InvalidRequest, LeaseLimit, LogitServiceError, RegistryError, SnapshotCorrupt, VersionNotFound, VersionOutsideWindow,
)
from logit_service.registry.memory import InMemoryRegistry
from logit_service.snapshots.cache import CachedWeights, WeightCache, state_dict_nbytes
from logit_service.snapshots.manifest import MANIFEST_NAME, read_manifest, snapshot_dirname
from logit_service.snapshots.store import SnapshotStore
from logit_service.snapshots.writer import WEIGHTS_NAME, write_snapshot
from logit_service.types import VersionState

MODEL_KWARGS = {"vocab_size": 256, "hidden_size": 32, "layers": 1}
NUM_VERSIONS = 6
K = 3


class Versions:
    """Weights of versions 0..NUM_VERSIONS-1 of one tiny architecture (distinct random seeds)."""

    def __init__(self) -> None:
        models = [build_tiny_model(seed=v, **MODEL_KWARGS) for v in range(NUM_VERSIONS)]
        self.config = models[0].config.to_dict()
        self.states = [{k: t.detach().clone() for k, t in m.state_dict().items()} for m in models]

    def write(self, root: Path, version: int) -> Path:
        return write_snapshot(root, version, self.states[version], self.config)


@pytest.fixture(scope="module")
def versions() -> Versions:
    return Versions()


@pytest.fixture
def root(tmp_path) -> Path:
    return tmp_path / "snapshots"


def _store(root: Path, *, delete_evicted: bool = True, cache_bytes: int = 1 << 30) -> SnapshotStore:
    return SnapshotStore(
        root, InMemoryRegistry(), retention_window=K, cache_bytes=cache_bytes, delete_evicted=delete_evicted
    )


def _publish_all(store: SnapshotStore, versions: Versions) -> None:
    for v in range(NUM_VERSIONS):
        store.publish(v, versions.write(store.root, v))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _assert_state_equal(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name


def test_publish_registers_the_version(root, versions):
    store = _store(root)
    assert store.window() is None
    path = versions.write(root, 0)

    record, new = store.publish(0, path)

    assert new is True
    assert store.registry.get(0) == record
    assert record.snapshot_path == path.name  # relative to the root: replicas may mount it elsewhere
    assert store.path_of(record) == path
    assert record.digest == read_manifest(path).digest
    assert record.state == VersionState.RETAINED
    assert store.window() == (0, 0)
    assert store.resolve(0) == record
    _assert_state_equal(store.load(record).state_dict, versions.states[0])

    again, new_again = store.publish(0, path)
    assert (again, new_again) == (record, False)


def test_publish_under_another_version_number_is_refused(root, versions):
    store = _store(root)
    path = versions.write(root, 2)

    with pytest.raises(InvalidRequest, match="holds version 2, but it was published as 3"):
        store.publish(3, path)
    assert store.registry.list(include_evicted=True) == []


@pytest.mark.parametrize("delete_evicted", [True, False], ids=["evicted dirs deleted", "evicted dirs kept"])
def test_retention_window_evicts_the_oldest_versions(root, versions, delete_evicted):
    store = _store(root, delete_evicted=delete_evicted)

    _publish_all(store, versions)

    assert store.window() == (3, 5)
    assert [r.policy_version for r in store.retained()] == [3, 4, 5]
    for v in range(NUM_VERSIONS):
        expected_state = VersionState.EVICTED if v < 3 else VersionState.RETAINED
        assert store.registry.get(v).state == expected_state, v
        assert (root / snapshot_dirname(v)).is_dir() == (v >= 3 or not delete_evicted), v
    with pytest.raises(VersionOutsideWindow, match=r"version 1 is outside the retention window \[3, 5\]"):
        store.resolve(1)
    with pytest.raises(VersionNotFound, match="version 9 was never published"):
        store.resolve(9)
    assert store.resolve(4).policy_version == 4


def test_version_older_than_the_window_cannot_be_published(root, versions, tmp_path):
    store = _store(root)
    _publish_all(store, versions)
    late = versions.write(root, 2)  # written again after its directory was deleted

    with pytest.raises(VersionOutsideWindow, match=r"\[3, 5\]"):
        store.publish(2, late)
    assert store.registry.get(2).state == VersionState.EVICTED


def test_eviction_drops_cached_weights(root, versions):
    store = _store(root)
    for v in range(K):
        store.load(store.publish(v, versions.write(root, v))[0])
    assert store.cache.keys() == ["0", "1", "2"]

    store.publish(K, versions.write(root, K))

    assert store.cache.keys() == ["1", "2"]


def test_publishing_a_corrupted_snapshot_registers_nothing(root, versions):
    store = _store(root)
    path = versions.write(root, 0)
    _flip_last_byte(path / WEIGHTS_NAME)

    with pytest.raises(SnapshotCorrupt, match=WEIGHTS_NAME):
        store.publish(0, path)

    assert store.registry.latest() is None
    assert store.registry.list(include_evicted=True) == []
    assert store.window() is None


def _flip_weights(path: Path, versions: Versions, tmp_path: Path) -> None:
    _flip_last_byte(path / WEIGHTS_NAME)


def _replace_with_other_weights(path: Path, versions: Versions, tmp_path: Path) -> None:
    # A complete, self-consistent snapshot of other weights copied over the published one.
    other = write_snapshot(tmp_path / "other", 1, versions.states[0], versions.config)
    for name in (WEIGHTS_NAME, MANIFEST_NAME):
        shutil.copyfile(other / name, path / name)


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(_flip_weights, id="weights byte flipped"),
        pytest.param(_replace_with_other_weights, id="snapshot rewritten with other weights"),
    ],
)
def test_loading_a_version_corrupted_after_publish_fails_while_others_load(root, versions, tmp_path, corrupt):
    store = _store(root)
    for v in (0, 1):
        store.publish(v, versions.write(root, v))
    corrupt(root / snapshot_dirname(1), versions, tmp_path)

    with pytest.raises(SnapshotCorrupt, match="refusing to serve"):
        store.load(store.resolve(1))

    assert "1" not in store.cache.keys()
    _assert_state_equal(store.load(store.resolve(0)).state_dict, versions.states[0])


def test_another_architecture_is_refused(root, versions):
    store = _store(root)
    store.publish(0, versions.write(root, 0))
    wider = build_tiny_model(seed=0, **{**MODEL_KWARGS, "hidden_size": 64})
    path = write_snapshot(root, 1, wider.state_dict(), wider.config.to_dict())

    with pytest.raises(InvalidRequest, match="one architecture"):
        store.publish(1, path)

    assert store.registry.get(1) is None
    assert store.window() == (0, 0)


def _junk(root: Path, versions: Versions) -> None:
    (root / "notes").mkdir()
    (root / "notes" / MANIFEST_NAME).write_text("{}")
    (root / "v00000009").write_text("a file, not a directory")
    tmp = root / ".tmp-v00000003-0badf00d"
    tmp.mkdir()
    (tmp / WEIGHTS_NAME).write_bytes(b"half written")
    (root / "v00000004").mkdir()  # no manifest
    garbled = versions.write(root, 5)
    (garbled / MANIFEST_NAME).write_text('{"policy_version": 5, "files": {')
    tampered = versions.write(root, 1)
    data = json.loads((tampered / MANIFEST_NAME).read_text())
    data["digest"] = "0" * 64
    (tampered / MANIFEST_NAME).write_text(json.dumps(data))
    # A manifest naming another version than its directory.
    write_snapshot(root, 3, versions.states[3], versions.config, dirname="v00000006")


def test_scan_registers_directories_written_straight_into_the_root(root, versions):
    store = _store(root)
    versions.write(root, 2)
    _junk(root, versions)

    assert store.scan() == [2]

    assert [r.policy_version for r in store.registry.list(include_evicted=True)] == [2]
    _assert_state_equal(store.load(store.resolve(2)).state_dict, versions.states[2])
    assert store.scan() == []


def test_resolve_finds_a_directory_written_after_the_last_scan(root, versions):
    store = _store(root)
    store.publish(0, versions.write(root, 0))
    versions.write(root, 1)

    assert store.resolve(1).policy_version == 1
    assert store.window() == (0, 1)


def test_scan_skips_a_manifest_whose_files_field_is_not_an_object(root, versions):
    store = _store(root)
    versions.write(root, 2)
    bad = versions.write(root, 1)
    data = json.loads((bad / MANIFEST_NAME).read_text())
    data["files"] = None
    (bad / MANIFEST_NAME).write_text(json.dumps(data))

    assert store.scan() == [2]


@pytest.mark.parametrize("delete_evicted", [True, False], ids=["evicted dirs deleted", "evicted dirs kept"])
def test_new_store_rebuilds_its_view_from_the_directory(root, versions, delete_evicted):
    first = _store(root, delete_evicted=delete_evicted)
    _publish_all(first, versions)

    second = _store(root, delete_evicted=delete_evicted)
    assert second.window() is None
    record = second.resolve(4)

    assert record.digest == first.registry.get(4).digest
    assert second.window() == (3, 5)
    assert [r.policy_version for r in second.retained()] == [3, 4, 5]
    _assert_state_equal(second.load(record).state_dict, versions.states[4])
    with pytest.raises(VersionOutsideWindow, match=r"\[3, 5\]"):
        second.resolve(1)


def _entry(key: str, floats: int) -> CachedWeights:
    state_dict = {"w": torch.zeros(floats, dtype=torch.float32)}
    return CachedWeights(key=key, digest=f"digest-{key}", state_dict=state_dict, nbytes=state_dict_nbytes(state_dict))


def test_state_dict_nbytes_counts_every_element():
    assert state_dict_nbytes({"a": torch.zeros(3, 5), "b": torch.zeros(7, dtype=torch.bfloat16)}) == 3 * 5 * 4 + 7 * 2


def test_weight_cache_drops_the_least_recently_used_first():
    cache = WeightCache(budget_bytes=300)
    for key in ("a", "b", "c"):
        cache.put(_entry(key, 25))  # 100 bytes each
    assert cache.get("a") is not None  # "a" is now the most recent

    cache.put(_entry("d", 25))

    assert cache.keys() == ["c", "a", "d"]
    assert cache.get("b") is None
    assert cache.used_bytes == 300


def test_weight_cache_stays_within_its_budget():
    cache = WeightCache(budget_bytes=300)
    expected_keys = [["0"], ["0", "1"], ["1", "2"], ["2", "3"], ["3", "4"], ["5"]]
    for i, (floats, expected) in enumerate(zip([25, 50, 10, 40, 30, 60], expected_keys)):
        cache.put(_entry(str(i), floats))  # 100, 200, 40, 160, 120, 240 bytes

        assert cache.used_bytes <= 300
        assert cache.keys() == expected, i


def test_weight_cache_does_not_keep_an_entry_larger_than_its_budget():
    cache = WeightCache(budget_bytes=300)
    cache.put(_entry("small", 25))

    cache.put(_entry("huge", 76))  # 304 bytes

    assert cache.get("huge") is None
    assert cache.keys() == ["small"]
    assert cache.used_bytes == 100


def test_weight_cache_replaces_an_entry_under_the_same_key():
    cache = WeightCache(budget_bytes=300)
    cache.put(_entry("a", 25))
    cache.put(_entry("b", 25))

    cache.put(_entry("a", 50))

    assert cache.keys() == ["b", "a"]
    assert cache.get("a").nbytes == 200
    assert cache.used_bytes == 300


def test_a_version_evicted_between_lookup_and_load_answers_outside_window(root, versions):
    store = _store(root, cache_bytes=0)
    store.publish(0, versions.write(root, 0))
    record = store.resolve(0)  # the engine plans with this record ...
    for v in range(1, K + 1):  # ... while newer publications push version 0 out of the window
        store.publish(v, versions.write(root, v))

    with pytest.raises(VersionOutsideWindow):
        store.load(record)


def test_a_replica_mounting_the_same_storage_elsewhere_loads_the_same_record(root, versions, tmp_path):
    store = _store(root)
    record, _ = store.publish(0, versions.write(root, 0))
    elsewhere = tmp_path / "other-mount"
    elsewhere.symlink_to(root)  # the same files under another path, as a second replica would see them
    other = SnapshotStore(elsewhere, store.registry, retention_window=K, cache_bytes=0)
    assert other.path_of(record) == elsewhere / "v00000000"
    _assert_state_equal(other.load(record).state_dict, versions.states[0])


def test_recovery_removes_unleased_strays_below_the_window_and_keeps_leased_ones(root, versions):
    store = _store(root)
    for v in (3, 4, 5):
        store.publish(v, versions.write(root, v))
    versions.write(root, 0)  # below the window [3, 5], never registered here: nothing keeps it
    versions.write(root, 1)
    store.lease_files.take(1, "rollout", ttl_s=600)  # a lease another replica (or a past run) took

    fresh = SnapshotStore(root, store.registry, retention_window=K, cache_bytes=1 << 30)
    fresh.remove_leftovers()

    assert not (root / snapshot_dirname(0)).exists()
    assert (root / snapshot_dirname(1)).is_dir()
    assert 1 in fresh.leased()


class _Unreachable:
    """A registry whose every call fails with RegistryError while `down` is set."""

    def __init__(self, inner: InMemoryRegistry) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name):
        method = getattr(self.inner, name)

        def call(*args, **kwargs):
            if self.down:
                raise RegistryError("the registry is unreachable")
            return method(*args, **kwargs)

        return call


def test_known_versions_resolve_and_load_while_the_registry_is_down(root, versions):
    registry = _Unreachable(InMemoryRegistry())
    store = SnapshotStore(root, registry, retention_window=K, cache_bytes=1 << 30)
    for v in range(NUM_VERSIONS):
        store.publish(v, versions.write(root, v))
    registry.down = True

    record = store.resolve(4)
    _assert_state_equal(store.load(record).state_dict, versions.states[4])
    with pytest.raises(VersionOutsideWindow, match=r"\[3, 5\]"):
        store.resolve(1)
    with pytest.raises(RegistryError, match="not among the versions"):
        store.resolve(9)
    with pytest.raises(RegistryError):
        store.lease([4], "rollout", ttl_s=60)
    assert store.lease_files.leased() == set()  # a failed lease leaves no file


def test_weight_cache_byte_count_follows_puts_replacements_and_drops():
    cache = WeightCache(budget_bytes=300)
    for key, floats in [("a", 25), ("b", 10), ("a", 40), ("c", 30), ("b", 5)]:
        cache.put(_entry(key, floats))
        cache.drop("missing")
    cache.drop("c")

    assert cache.keys() == ["a", "b"]
    assert cache.used_bytes == 4 * (40 + 5)


def test_at_the_window_s_lower_edge_a_known_version_resolves_while_the_registry_is_down(root, versions):
    registry = _Unreachable(InMemoryRegistry())
    store = SnapshotStore(root, registry, retention_window=K, cache_bytes=1 << 30)
    for v in range(NUM_VERSIONS):
        store.publish(v, versions.write(root, v))
    registry.down = True
    assert store.resolve(3) == registry.inner.get(3)  # the window is [3, 5]
    with pytest.raises(VersionOutsideWindow):
        store.resolve(2)


def test_a_version_leased_before_it_left_the_window_stays_retained(root, versions):
    store = _store(root)
    for v in range(5):
        store.publish(v, versions.write(root, v))
    store.lease([2], "rollout", ttl_s=600)
    store.publish(5, versions.write(root, 5))
    assert store.window() == (3, 5)
    assert [r.policy_version for r in store.retained()] == [2, 3, 4, 5]


def test_a_lease_over_the_distinct_version_bound_names_the_limit_and_the_count(root, versions):
    store = SnapshotStore(root, InMemoryRegistry(), retention_window=K, cache_bytes=1 << 30, max_leased_versions=2)
    for v in range(3):
        store.publish(v, versions.write(root, v))
    store.lease([0], "a", ttl_s=600)
    with pytest.raises(LeaseLimit) as caught:
        store.lease([1, 2], "b", ttl_s=600)
    assert caught.value.message == (
        "leasing [1, 2] would put leases on 3 distinct versions; the limit is 2 (release versions no longer needed)"
    )
    assert caught.value.metadata == {"limit": "max_leased_versions", "limit_value": "2", "value": "3"}
    assert store.leased() == {0}  # nothing of the refused call was leased


def test_a_snapshot_path_with_a_nul_byte_is_refused_by_name(root):
    with pytest.raises(InvalidRequest) as caught:
        _store(root).publish(0, "v\0")
    assert caught.value.message == "snapshot_path contains a NUL byte"


def test_the_cached_bytes_of_a_weights_file_are_found_only_by_version_name_and_digest(root, versions):
    store = _store(root)
    record, _ = store.publish(1, versions.write(root, 1))
    name = snapshot_dirname(1)
    sha256 = read_manifest(root / name).files[WEIGHTS_NAME]
    assert store.cached_file(name, WEIGHTS_NAME, sha256) is None  # not loaded yet: nothing in RAM
    store.load(record)
    assert bytes(store.cached_file(name, WEIGHTS_NAME, sha256)) == (root / name / WEIGHTS_NAME).read_bytes()
    assert store.cached_file(name, WEIGHTS_NAME, "0" * 64) is None  # another file's digest
    assert store.cached_file(name, "other.safetensors", sha256) is None
    assert store.cached_file(snapshot_dirname(2), WEIGHTS_NAME, sha256) is None
    assert store.cached_file("not-a-version", WEIGHTS_NAME, sha256) is None


def test_a_publish_of_a_version_s_own_directory_missing_here_is_fetched_first(root, versions, tmp_path):
    fetched: list[tuple[int, object]] = []

    def fetch_from_a_peer(policy_version: int, digest) -> bool:
        fetched.append((policy_version, digest))
        versions.write(root, policy_version)  # what a copy from a peer leaves behind
        return True

    store = _store(root)
    store.fetch_missing = fetch_from_a_peer
    record, new = store.publish(2, snapshot_dirname(2))
    assert new and record.policy_version == 2 and fetched == [(2, None)]
    store.publish(2, snapshot_dirname(2))  # there now: not fetched again
    assert fetched == [(2, None)]
    with pytest.raises(LogitServiceError):
        store.publish(3, "elsewhere")  # not the version's own name: nothing a peer could have
    assert fetched == [(2, None)]


def test_weight_cache_counts_hits_and_misses_and_a_peek_neither_counts_nor_refreshes():
    cache = WeightCache(budget_bytes=300)
    cache.put(_entry("a", 25))
    cache.put(_entry("b", 25))
    assert cache.get("a").key == "a" and cache.get("zzz") is None and cache.get("a") is not None
    assert cache.get("yyy") is None
    assert (cache.hits, cache.misses) == (2, 2)
    assert cache.peek("b").key == "b" and cache.peek("zzz") is None
    assert (cache.hits, cache.misses) == (2, 2)
    assert cache.keys() == ["b", "a"]  # the gets moved "a" last; the peek left "b" the oldest
    cache.put(_entry("c", 25))
    cache.put(_entry("d", 25))  # over the budget: the oldest goes, and a peek did not make "b" recent
    assert cache.keys() == ["a", "c", "d"]


def test_weight_cache_keeps_an_entry_of_exactly_its_budget_and_a_drop_frees_its_bytes():
    cache = WeightCache(budget_bytes=300)
    cache.put(_entry("exact", 75))  # 300 bytes
    assert cache.keys() == ["exact"] and cache.used_bytes == 300
    cache.drop("exact")
    cache.drop("never-there")
    assert cache.keys() == [] and cache.used_bytes == 0
    cache.put(_entry("a", 25))
    assert cache.used_bytes == 100


def test_scan_skips_an_entry_that_fails_in_an_unforeseen_way_and_says_which(root, versions, monkeypatch, caplog):
    """The catch-all of the scan (the directory is untrusted input): an error of no kind the store knows,
    put in by replacing the listed-files check for one version, skips that entry with its name and
    the error, and the scan goes on."""
    from logit_service.snapshots import store as store_module

    check = store_module.check_listed_files

    def fails_for_version_1(path, manifest):
        if manifest.policy_version == 1:
            raise RuntimeError("an error nobody foresaw")
        return check(path, manifest)

    monkeypatch.setattr(store_module, "check_listed_files", fails_for_version_1)
    store = _store(root)
    versions.write(root, 1)
    versions.write(root, 2)

    with caplog.at_level("WARNING", logger="logit_service.snapshots.store"):
        assert store.scan() == [2]
    warned = [r.getMessage() for r in caplog.records if "skipping snapshot" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("skipping snapshot v00000001 in ")
    assert warned[0].endswith(": RuntimeError: an error nobody foresaw")
