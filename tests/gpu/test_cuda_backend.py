"""The torch backend on CUDA: same exactness contract as on CPU. Runs only where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-4), ("bfloat16", 5e-2)])
def test_cuda_scores_match_a_cpu_fp32_forward(dtype, tolerance):
    model = build_tiny_model(seed=0, vocab_size=1024)
    backend = TorchBackend(dtype=dtype, device="cuda", attn_implementation="sdpa")
    backend.ensure_model(model.config.to_dict())
    backend.load("0", "digest", model.state_dict())
    tokens = np.random.default_rng(0).integers(0, 1024, 200).astype(np.int64)
    (served,) = backend.score([ScoreItem(tokens, np.arange(1, 200))])
    expected = reference_logprobs(model, tokens).numpy()[1:]
    assert served.dtype == np.float32
    assert np.abs(served - expected).max() < tolerance
