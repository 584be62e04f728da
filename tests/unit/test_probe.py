"""The probe picks the lean path only where it equals the model's own forward, falls back otherwise,
and refuses a model no path reproduces; the model is built once however many threads ask."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from logit_service.backends import torch_backend
from logit_service.backends.torch_backend import ScoreItem, TorchBackend
from logit_service.errors import ModelRejected
from tests.tiny_architectures import build_trained, causal_lm_architectures, direct_logprobs, tiny_architecture

NAMES = dict(causal_lm_architectures())


def _prepared(model_type: str, mutate=None, **overrides) -> tuple[TorchBackend, torch.nn.Module]:
    arch = tiny_architecture(model_type, NAMES[model_type])
    arch = type(arch)(arch.model_type, arch.class_name, {**arch.config, **overrides})
    model = build_trained(arch)
    backend = TorchBackend(logprob_chunk_tokens=8)
    if mutate is not None:
        original = torch_backend.build_model

        def build_and_mutate(*args, **kwargs):
            built = original(*args, **kwargs)
            mutate(built)
            return built

        torch_backend.build_model = build_and_mutate
    try:
        backend.prepare(arch.config, config_hash="h", key="0", digest="d", state_dict=model.state_dict())
    finally:
        if mutate is not None:
            torch_backend.build_model = original
    if mutate is not None:
        mutate(model)
    return backend, model


def _served_error(backend: TorchBackend, model: torch.nn.Module) -> float:
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, 30).astype(np.int64)
    (served,) = backend.score([ScoreItem(tokens, np.arange(1, 30))])
    return float(np.abs(served - direct_logprobs(model, torch.from_numpy(tokens)).numpy()).max())


def test_a_known_post_head_transform_keeps_the_lean_path():
    backend, model = _prepared("cohere", logit_scale=0.25)
    assert backend.path.name == "lean"
    assert _served_error(backend, model) <= 1e-5


def test_an_unknown_post_head_transform_falls_back_to_the_models_own_forward():
    # Cohere's forward multiplies by the module attribute; the config (what the lean head reads) says
    # otherwise: a transform the lean path does not know about, as a new architecture would bring.
    def rescale(model):
        model.logit_scale = 0.5

    backend, model = _prepared("cohere", mutate=rescale, logit_scale=0.0625)
    assert backend.path.name == "logits_to_keep"
    assert backend.probe.errors["lean"] > 1e-2
    assert _served_error(backend, model) <= 1e-5


def test_the_fallback_never_builds_logits_for_the_whole_sequence():
    def rescale(model):
        model.logit_scale = 0.5

    backend, model = _prepared("cohere", mutate=rescale, logit_scale=0.0625)
    widths: list[int] = []
    backend.model.get_output_embeddings().register_forward_hook(lambda m, i, out: widths.append(out.shape[-2]))
    tokens = np.random.default_rng(1).integers(0, model.config.vocab_size, 40).astype(np.int64)
    backend.score([ScoreItem(tokens, np.arange(1, 40))])
    assert max(widths) <= 8  # logprob_chunk_tokens rows at a time, never 40
    assert sum(widths) == 39


def test_a_model_no_path_reproduces_is_refused():
    arch = tiny_architecture("prophetnet", NAMES["prophetnet"])
    model = build_trained(arch)
    with pytest.raises(ModelRejected, match="no log-prob path"):
        TorchBackend().prepare(arch.config, config_hash="h", key="0", digest="d", state_dict=model.state_dict())


def test_concurrent_first_builds_build_once(monkeypatch):
    arch = tiny_architecture("llama", NAMES["llama"])
    model = build_trained(arch)
    builds: list[int] = []
    original = torch_backend.build_model

    def counted(*args, **kwargs):
        builds.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch_backend, "build_model", counted)
    backend = TorchBackend()
    seen: list[bool] = []

    def publish():
        backend.prepare(arch.config, config_hash="h", key="0", digest="d", state_dict=model.state_dict())
        seen.append(backend.model is not None and backend.path is not None and backend.resident_key == "0")

    threads = [threading.Thread(target=publish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [1]
    assert seen == [True] * 4
    with pytest.raises(ModelRejected, match="one service serves one architecture"):
        backend.prepare(arch.config, config_hash="other", key="1", digest="e", state_dict=model.state_dict())
