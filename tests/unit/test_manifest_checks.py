"""A snapshot directory is untrusted input: each manifest field, file size and listed file is checked.

The cases here are the ones where a looser check would still let most manifests through: JSON's
`true` where an integer or a time belongs, a missing optional field, a file longer than it may be,
a missing manifest, a compact file standing in for a listed one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from logit_common.snapshots.manifest import (
    COMPACT_SUFFIX,
    MANIFEST_NAME,
    Manifest,
    check_file_size,
    check_listed_files,
    model_config_hash,
    parse_manifest,
    read_bounded,
    read_manifest,
    stored_file,
)
from logit_service.errors import InvalidRequest, SnapshotCorrupt

SHA = "ab" * 32


def _manifest_json(**changes) -> bytes:
    data = json.loads(Manifest(policy_version=3, files={"model.safetensors": SHA}, model_config_hash=SHA,
                               dtype="float32", created_at=1.5).to_json())  # fmt: skip
    data.pop("digest")
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(("field", "value"), [("policy_version", True), ("policy_version", 3.0), ("created_at", True)])
def test_a_boolean_or_float_where_an_integer_or_time_belongs_is_refused(field, value):
    with pytest.raises(SnapshotCorrupt, match=field):
        parse_manifest(_manifest_json(**{field: value}))


def test_a_manifest_without_a_kind_is_a_version():
    manifest, _ = parse_manifest(_manifest_json(kind=None))
    assert manifest.kind == "version"


def test_the_model_config_hash_does_not_depend_on_key_order():
    config = {"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 512}
    assert model_config_hash(config) == model_config_hash(dict(reversed(list(config.items()))))


def test_a_safetensors_file_longer_than_its_header_declares_is_refused(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "model.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8) + b"extra")
    with open(path, "rb") as f, pytest.raises(SnapshotCorrupt, match="header accounts for"):
        check_file_size(f, path)


@pytest.mark.parametrize("actual", [5, 15], ids=["shorter", "longer"])
def test_a_file_of_another_length_than_expected_is_refused(tmp_path, actual):
    path = tmp_path / "config.json"
    path.write_bytes(b"x" * actual)
    with open(path, "rb") as f, pytest.raises(SnapshotCorrupt, match="changed size"):
        read_bounded(f, 10, path)


def test_a_directory_without_a_manifest_is_named_in_the_error(tmp_path):
    (tmp_path / "v00000004").mkdir()
    with pytest.raises(InvalidRequest, match=f"v00000004 is not a snapshot: {MANIFEST_NAME} is missing"):
        read_manifest(tmp_path / "v00000004")


def test_a_listed_weights_file_may_be_there_in_its_compact_form(tmp_path):
    (tmp_path / ("model.safetensors" + COMPACT_SUFFIX)).write_bytes(b"delta")
    (tmp_path / "config.json").write_bytes(b"{}")
    manifest = Manifest(policy_version=1, files={"model.safetensors": SHA, "config.json": SHA},
                        model_config_hash=SHA, dtype="float32", created_at=0.0)  # fmt: skip

    assert stored_file(tmp_path, "model.safetensors") == tmp_path / ("model.safetensors" + COMPACT_SUFFIX)
    assert stored_file(tmp_path, "config.json") == tmp_path / "config.json"
    check_listed_files(tmp_path, manifest)  # both are there, one compact: nothing to refuse
    (tmp_path / "config.json").unlink()
    with pytest.raises(SnapshotCorrupt, match="config.json is listed in the manifest but missing"):
        check_listed_files(tmp_path, manifest)
