"""The zero-copy safetensors reader agrees with the safetensors library and refuses damaged files."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from logit_service.errors import SnapshotCorrupt
from logit_service.snapshots.loader import read_verified_buffer, tensors_from_safetensors_buffer
from logit_service.snapshots.manifest import file_sha256


def _tensors() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {
        "f32": torch.randn(3, 5),
        "bf16_odd": torch.randn(7).to(torch.bfloat16),
        "f16": torch.randn(2, 2).to(torch.float16),
        "scalar": torch.tensor(3.5),
        "ints": torch.arange(5),
        "empty": torch.zeros(0, 4),
        "flags": torch.tensor([True, False, True]),
    }


def _read(path):
    return tensors_from_safetensors_buffer(read_verified_buffer(path, file_sha256(path)), path)


def test_reader_matches_the_safetensors_library(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt"})
    reference, got = load_file(str(path)), _read(path)
    assert got.keys() == reference.keys()
    for name, tensor in reference.items():
        assert got[name].dtype == tensor.dtype and got[name].shape == tensor.shape
        assert torch.equal(got[name], tensor), name


def test_misaligned_tensor_data_is_copied_to_an_element_boundary(tmp_path):
    values = torch.tensor([1.5, -2.25], dtype=torch.float32)
    header = json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [1, 9]}}).encode()
    path = tmp_path / "odd.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" + values.numpy().tobytes())
    assert torch.equal(_read(path)["x"], values)


def test_a_changed_byte_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    expected = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(SnapshotCorrupt, match="sha256"):
        read_verified_buffer(path, expected)


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}, id="size disagrees with shape"),
        pytest.param({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, id="runs past the end"),
        pytest.param({"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}, id="unknown dtype"),
        pytest.param({"shape": [2], "data_offsets": [0, 8]}, id="no dtype"),
    ],
)
def test_malformed_headers_are_corrupt(tmp_path, entry):
    header = json.dumps({"x": entry}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(SnapshotCorrupt):
        _read(path)


@pytest.mark.parametrize(
    "tail, header_len, fragment",
    [
        pytest.param(b"\0" * 8, None, "header accounts for", id="bytes past the last tensor"),
        pytest.param(b"", 1 << 40, "declares a safetensors header of", id="header longer than the file"),
    ],
)
def test_a_file_is_read_only_up_to_what_its_header_declares(tmp_path, tail, header_len, fragment):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    data = path.read_bytes() + tail
    if header_len is not None:
        data = struct.pack("<Q", header_len) + data[8:]
    path.write_bytes(data)
    with pytest.raises(SnapshotCorrupt, match=fragment):
        read_verified_buffer(path, "0" * 64)  # refused on its size, before any byte is hashed
    with pytest.raises(SnapshotCorrupt, match=fragment):
        file_sha256(path)


def test_a_digest_mismatch_names_the_file_but_not_the_digest_found(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path))
    with pytest.raises(SnapshotCorrupt) as info:
        read_verified_buffer(path, "0" * 64)
    assert info.value.message.startswith(f"{tmp_path.name}/model.safetensors: its sha256 does not match")
    assert file_sha256(path) not in info.value.message


def test_every_dtype_the_reader_names_reads_as_the_library_reads_it(tmp_path):
    dtypes = [
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    ]  # fmt: skip
    tensors = {str(d): (torch.arange(6) % 2 if d == torch.bool else torch.arange(-3, 3) % 100).to(d) for d in dtypes}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    reference, got = load_file(str(path)), _read(path)
    for name, tensor in reference.items():
        assert got[name].dtype == tensor.dtype, name
        assert torch.equal(got[name], tensor), name


def _buffer(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def test_a_file_that_is_all_header_holds_no_tensors(tmp_path):
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    data = struct.pack("<Q", len(header)) + header  # the header ends exactly at the end of the file
    assert tensors_from_safetensors_buffer(_buffer(data), tmp_path / "model.safetensors") == {}
    with pytest.raises(SnapshotCorrupt, match=f"a header of {len(header)} bytes does not fit in {len(data) - 1} bytes"):
        tensors_from_safetensors_buffer(_buffer(data[:-1]), tmp_path / "model.safetensors")


def test_a_header_that_is_no_json_object_is_refused_by_name(tmp_path):
    header = b"[1, 2]"
    data = struct.pack("<Q", len(header)) + header
    with pytest.raises(SnapshotCorrupt) as caught:
        tensors_from_safetensors_buffer(_buffer(data), tmp_path / "model.safetensors")
    assert caught.value.message.endswith("/model.safetensors has an unreadable safetensors header: the header is not a JSON object")
