"""The backend built from a server's configuration carries every setting the configuration names."""

from __future__ import annotations

import torch

from logit_service.backends.factory import make_backend
from logit_service.config import ServerConfig

# Every backend setting away from its default, so that one dropped on the way shows as the default.
_TORCH_SETTINGS = {
    "dtype": "bfloat16",
    "attn_implementation": "eager",
    "max_batch_tokens": 4096,
    "logprob_chunk_tokens": 96,
    "batch_invariant": False,
    "tile_tokens": 512,
    "tile_rows": 3,
    "shrink_partial_tiles": True,
}


def test_the_torch_backend_gets_every_setting_of_the_configuration(tmp_path):
    default = make_backend(ServerConfig(snapshot_dir=tmp_path))
    # Building a backend touches no device, so one this machine lacks can be named.
    backend = make_backend(ServerConfig(snapshot_dir=tmp_path, device="cuda:1", **_TORCH_SETTINGS))
    assert backend.name == "torch"
    for name, value in _TORCH_SETTINGS.items():
        assert getattr(default, name) != value, name  # the check below could not fail otherwise
        assert getattr(backend, name) == value, name
    assert default.device == torch.device("cpu") and backend.device == torch.device("cuda:1")


def test_the_vllm_backend_gets_the_settings_it_takes(tmp_path):
    config = ServerConfig(snapshot_dir=tmp_path, backend="vllm", dtype="bfloat16", device="cuda:1", max_batch_tokens=4096)
    backend = make_backend(config)
    assert (backend.name, backend.dtype, backend.device, backend.max_batch_tokens) == ("vllm", "bfloat16", "cuda:1", 4096)
    assert backend.engine_kwargs == {}
