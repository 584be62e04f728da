"""The snapshot directory format: HF layout, manifest digests, atomic and idempotent writes, tamper checks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from logit_service.demo.tiny_model import build_tiny_model, tiny_qwen2_config
from logit_service.errors import SnapshotCorrupt, VersionConflict
from logit_service.snapshots.loader import load_verified_weights
from logit_service.snapshots.manifest import (
    MANIFEST_NAME,
    model_config_hash,
    read_manifest,
    snapshot_dirname,
    verify_snapshot,
)
from logit_service.snapshots.writer import CONFIG_NAME, WEIGHTS_NAME, write_snapshot

MODEL_KWARGS = {"vocab_size": 256, "hidden_size": 32, "layers": 1}


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_tiny_model(seed=0, **MODEL_KWARGS)


@pytest.fixture
def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture
def config(model) -> dict:
    return model.config.to_dict()


def _tmp_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".tmp-"))


def _file_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def _perturbed(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    other = dict(state)
    other["model.norm.weight"] = state["model.norm.weight"] + 1.0
    return other


def test_write_produces_an_hf_directory_that_transformers_loads_bit_identically(tmp_path, model, state, config):
    from transformers import AutoModelForCausalLM

    path = write_snapshot(tmp_path, 7, state, config)

    assert path == tmp_path / snapshot_dirname(7) == tmp_path / "v00000007"
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME])
    assert _tmp_dirs(tmp_path) == []
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    loaded_state = loaded.state_dict()
    assert sorted(loaded_state) == sorted(state)
    for name, tensor in state.items():
        assert loaded_state[name].dtype == tensor.dtype, name
        assert torch.equal(loaded_state[name], tensor), name


def test_manifest_records_the_digest_and_the_sha256_of_every_file(tmp_path, state, config):
    path = write_snapshot(tmp_path, 3, state, config)

    recorded = json.loads((path / MANIFEST_NAME).read_text())
    manifest = read_manifest(path)
    assert recorded["digest"] == manifest.digest
    assert len(manifest.digest) == 64
    assert set(manifest.files) == {CONFIG_NAME, WEIGHTS_NAME}
    for name, sha in manifest.files.items():
        assert sha == hashlib.sha256((path / name).read_bytes()).hexdigest(), name
    assert manifest.policy_version == 3
    assert manifest.kind == "version"
    assert manifest.dtype == "float32"
    assert manifest.model_config_hash == model_config_hash(config)


# safetensors serialises its `__metadata__` map in hash-map order, so a header with two keys could come
# out either way; one write would be a coin flip, so the stability checks write many times.
REWRITES = 20


def test_digest_is_stable_across_writes(tmp_path, state, config):
    digests = {read_manifest(write_snapshot(tmp_path / str(i), 1, state, config)).digest for i in range(REWRITES)}

    # created_at differs between writes; the digest does not depend on it.
    assert len(digests) == 1


def test_digest_names_the_weights(tmp_path, state, config):
    first = read_manifest(write_snapshot(tmp_path / "a", 1, state, config))
    other = read_manifest(write_snapshot(tmp_path / "b", 1, _perturbed(state), config))

    assert other.digest != first.digest
    assert other.files[WEIGHTS_NAME] != first.files[WEIGHTS_NAME]
    assert other.files[CONFIG_NAME] == first.files[CONFIG_NAME]


def test_failed_save_leaves_no_temporary_directory(tmp_path, state, config, monkeypatch):
    import safetensors.torch

    def failing_save_file(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)

    with pytest.raises(OSError, match="No space left"):
        write_snapshot(tmp_path, 2, state, config)
    assert list(tmp_path.iterdir()) == []


def test_non_tensor_value_fails_and_leaves_no_temporary_directory(tmp_path, state, config):
    broken = dict(state)
    broken["model.norm.weight"] = [1.0, 2.0]  # not a tensor

    with pytest.raises((AttributeError, TypeError)):
        write_snapshot(tmp_path, 2, broken, config)
    assert list(tmp_path.iterdir()) == []


def test_same_weights_again_is_idempotent(tmp_path, state, config):
    path = write_snapshot(tmp_path, 4, state, config)
    before = _file_bytes(path)

    for _ in range(REWRITES):
        again = write_snapshot(tmp_path, 4, {k: v.clone() for k, v in state.items()}, config)
        assert again == path

    assert _file_bytes(path) == before
    assert _tmp_dirs(tmp_path) == []


def test_other_weights_under_the_same_version_conflict_and_leave_the_snapshot_alone(tmp_path, state, config):
    path = write_snapshot(tmp_path, 4, state, config)
    before = _file_bytes(path)

    with pytest.raises(VersionConflict, match="version 4"):
        write_snapshot(tmp_path, 4, _perturbed(state), config)

    assert _file_bytes(path) == before
    assert _tmp_dirs(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v00000004"]


def test_negative_version_is_refused(tmp_path, state, config):
    with pytest.raises(ValueError, match="policy_version must be >= 0"):
        write_snapshot(tmp_path, -1, state, config)
    assert list(tmp_path.iterdir()) == []


def _aliased_states() -> list:
    base = torch.arange(32, dtype=torch.float32).reshape(8, 4)
    return [
        pytest.param({"embed": base, "head": base}, id="same tensor under two names"),
        pytest.param({"full": base, "view": base.view(-1)}, id="view of the same storage"),
        pytest.param({"q": base[:4], "k": base[4:]}, id="slices at different offsets"),
        pytest.param({"w": base, "w_t": base.t()}, id="transposed view"),
    ]


@pytest.mark.parametrize("aliased", _aliased_states())
def test_shared_storage_tensors_are_written(tmp_path, aliased):
    expected = {k: v.clone() for k, v in aliased.items()}

    path = write_snapshot(tmp_path, 0, aliased, {"model_type": "toy"})

    loaded = load_file(str(path / WEIGHTS_NAME))
    assert sorted(loaded) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name
    assert _tmp_dirs(tmp_path) == []


def test_tied_embedding_model_round_trips(tmp_path):
    from transformers import AutoModelForCausalLM

    config = tiny_qwen2_config(**{k: v for k, v in MODEL_KWARGS.items()})
    config.tie_word_embeddings = True
    torch.manual_seed(3)
    tied = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    state = tied.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()

    path = write_snapshot(tmp_path, 0, state, tied.config.to_dict())

    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name


def _tamper_digest(data: dict) -> None:
    data["digest"] = "0" * 64


def _tamper_file_entry(data: dict) -> None:
    data["files"][WEIGHTS_NAME] = hashlib.sha256(b"other weights").hexdigest()


def _drop_file_entry(data: dict) -> None:
    del data["files"][CONFIG_NAME]


def _tamper_version(data: dict) -> None:
    data["policy_version"] = data["policy_version"] + 1


def _tamper_config_hash(data: dict) -> None:
    data["model_config_hash"] = "f" * 64


def _drop_field(data: dict) -> None:
    del data["model_config_hash"]


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(_tamper_digest, id="digest field edited"),
        pytest.param(_tamper_file_entry, id="files entry changed"),
        pytest.param(_drop_file_entry, id="files entry removed"),
        pytest.param(_tamper_version, id="policy_version changed"),
        pytest.param(_tamper_config_hash, id="model_config_hash changed"),
        pytest.param(_drop_field, id="required field missing"),
    ],
)
def test_tampered_manifest_is_corrupt(tmp_path, state, config, tamper):
    path = write_snapshot(tmp_path, 5, state, config)
    data = json.loads((path / MANIFEST_NAME).read_text())
    tamper(data)
    (path / MANIFEST_NAME).write_text(json.dumps(data))

    with pytest.raises(SnapshotCorrupt):
        read_manifest(path)


def test_unparseable_manifest_is_corrupt(tmp_path, state, config):
    path = write_snapshot(tmp_path, 5, state, config)
    (path / MANIFEST_NAME).write_text('{"policy_version": 5, "files": {')

    with pytest.raises(SnapshotCorrupt, match="cannot be read as a manifest"):
        read_manifest(path)


@pytest.mark.parametrize(
    "files",
    [None, ["model.safetensors"], "model.safetensors"],
    ids=["files is null", "files is a list", "files is a string"],
)
def test_mistyped_files_field_is_corrupt(tmp_path, state, config, files):
    path = write_snapshot(tmp_path, 5, state, config)
    data = json.loads((path / MANIFEST_NAME).read_text())
    data["files"] = files
    (path / MANIFEST_NAME).write_text(json.dumps(data))

    with pytest.raises(SnapshotCorrupt):
        read_manifest(path)


def test_verify_snapshot_detects_a_flipped_byte_in_the_weights(tmp_path, state, config):
    path = write_snapshot(tmp_path, 6, state, config)
    manifest = read_manifest(path)
    verify_snapshot(path, manifest)  # intact: no error

    weights = bytearray((path / WEIGHTS_NAME).read_bytes())
    weights[-1] ^= 0x01  # the last byte is tensor data, not the header
    (path / WEIGHTS_NAME).write_bytes(bytes(weights))

    assert read_manifest(path).digest == manifest.digest  # the manifest itself still reads
    with pytest.raises(SnapshotCorrupt, match=WEIGHTS_NAME):
        verify_snapshot(path, manifest)
    with pytest.raises(SnapshotCorrupt, match="refusing to serve"):
        load_verified_weights(path, manifest)


def test_verify_snapshot_detects_a_missing_file(tmp_path, state, config):
    path = write_snapshot(tmp_path, 6, state, config)
    manifest = read_manifest(path)
    (path / CONFIG_NAME).unlink()

    with pytest.raises(SnapshotCorrupt, match="missing"):
        verify_snapshot(path, manifest)


def test_model_config_hash_ignores_volatile_keys_but_not_the_architecture(config):
    base = model_config_hash(config)

    assert model_config_hash({**config, "transformers_version": "0.0.1"}) == base
    assert model_config_hash({**config, "dtype": "bfloat16"}) == base
    assert model_config_hash({**config, "torch_dtype": "bfloat16"}) == base
    assert model_config_hash({k: v for k, v in config.items() if k != "transformers_version"}) == base
    assert model_config_hash({**config, "hidden_size": config["hidden_size"] * 2}) != base
    assert model_config_hash({**config, "num_hidden_layers": config["num_hidden_layers"] + 1}) != base


@pytest.mark.parametrize("name", ["../secret", "/etc/passwd", "sub/model.safetensors", ".hidden", ""])
def test_manifest_entries_must_be_plain_file_names(tmp_path, state, config, name):
    path = write_snapshot(tmp_path, 7, state, config)
    data = json.loads((path / MANIFEST_NAME).read_text())
    data["files"][name] = "0" * 64
    data.pop("digest")
    (path / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(SnapshotCorrupt, match="plain file names"):
        read_manifest(path)


def _raw_edit(old: str, new: str):
    return lambda text: text.replace(old, new, 1)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": 1e400'), id="version overflows to inf"),
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": 8.0'), id="version is a float"),
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": true'), id="version is a bool"),
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": -8'), id="version is negative"),
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": 9223372036854775808'), id="version past int64"),
        pytest.param(_raw_edit('"policy_version": 8', '"policy_version": ' + "9" * 5000), id="version of 5000 digits"),
        pytest.param(_raw_edit('"created_at": ', '"created_at": NaN, "was": '), id="created_at is NaN"),
        pytest.param(_raw_edit('"created_at": ', '"created_at": 1e999, "was": '), id="created_at is infinite"),
        pytest.param(_raw_edit('"dtype": ', '"dtype": 3, "was": '), id="dtype is a number"),
        pytest.param(_raw_edit('"covers_versions": []', '"covers_versions": [1.5]'), id="covers a float version"),
        pytest.param(_raw_edit('"extra": {}', '"extra": []'), id="extra is a list"),
        pytest.param(lambda text: "[" * 100_000 + "]" * 100_000, id="nested past the recursion limit"),
        pytest.param(lambda text: "[]", id="not an object"),
        pytest.param(lambda text: "\udcff", id="not UTF-8"),
    ],
)
def test_malformed_manifest_values_are_corrupt_never_another_error(tmp_path, state, config, edit):
    path = write_snapshot(tmp_path, 8, state, config)
    text = (path / MANIFEST_NAME).read_text()
    (path / MANIFEST_NAME).write_bytes(edit(text).encode("utf-8", "surrogateescape"))
    with pytest.raises(SnapshotCorrupt):
        read_manifest(path)


def test_a_manifest_over_its_size_bound_is_not_read(tmp_path, state, config, monkeypatch):
    from logit_service.snapshots import manifest as manifest_module

    path = write_snapshot(tmp_path, 8, state, config)
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 64)
    with pytest.raises(SnapshotCorrupt, match="over the manifest limit of 64"):
        read_manifest(path)


@pytest.mark.parametrize("name", [MANIFEST_NAME, WEIGHTS_NAME, CONFIG_NAME])
def test_links_are_never_followed_even_to_identical_bytes(tmp_path, state, config, name):
    path = write_snapshot(tmp_path / "snapshots", 8, state, config)
    manifest = read_manifest(path)
    copy = tmp_path / "copy"
    copy.write_bytes((path / name).read_bytes())
    (path / name).unlink()
    (path / name).symlink_to(copy)
    with pytest.raises(SnapshotCorrupt, match="symbolic link"):
        if name == MANIFEST_NAME:
            read_manifest(path)
        else:
            verify_snapshot(path, manifest)
    if name == WEIGHTS_NAME:
        with pytest.raises(SnapshotCorrupt, match="symbolic link"):
            load_verified_weights(path, manifest)


def test_a_snapshot_directory_that_is_a_link_is_not_read(tmp_path, state, config):
    path = write_snapshot(tmp_path / "real", 8, state, config)
    (tmp_path / "v00000008").symlink_to(path, target_is_directory=True)
    with pytest.raises(SnapshotCorrupt, match="symbolic link"):
        read_manifest(tmp_path / "v00000008")


def test_the_version_directory_name_is_ascii_digits_within_int64():
    from logit_service.snapshots.manifest import parse_snapshot_dirname

    assert parse_snapshot_dirname("v00000007") == 7
    assert parse_snapshot_dirname("v" + "9" * 19) is None  # over 2^63 - 1
    assert parse_snapshot_dirname("v" + "9" * 300) is None
    assert parse_snapshot_dirname("v٠٠٠٠٠٠٠٧") is None  # Arabic-Indic digits: int() would take them


def test_a_config_that_changes_size_while_it_is_read_is_corrupt_and_named(tmp_path, state, config, monkeypatch):
    """A file shrinking between its size check and its read (another process rewriting the snapshot
    directory) is put in by making the size check report 10 bytes more than the file holds."""
    from logit_service.snapshots import loader
    from logit_service.snapshots.manifest import read_manifest

    path = write_snapshot(tmp_path, 1, state, config)
    check = loader.check_file_size
    monkeypatch.setattr(loader, "check_file_size", lambda f, p: check(f, p) + 10)
    with pytest.raises(SnapshotCorrupt) as e:
        loader.load_verified_config(path, read_manifest(path))
    assert e.value.message == "v00000001/config.json changed size while it was being read"
