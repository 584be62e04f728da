"""Weights into the served model: a tied head may be absent from the snapshot (transformers saves tied
models without it), anything else that does not fit is refused by name."""

from __future__ import annotations

import logging

import pytest
import torch
import transformers

from logit_service.backends.torch_backend import TorchBackend, _load_into
from logit_service.errors import ModelRejected


def _model(*, tied: bool, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=tied,
    )  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(config)


def test_a_tied_head_left_out_of_the_snapshot_is_the_embeddings():
    state = {k: v for k, v in _model(tied=True, seed=0).state_dict().items() if k != "lm_head.weight"}
    served = _model(tied=True, seed=1)
    _load_into(served, state)
    assert torch.equal(served.lm_head.weight, state["model.embed_tokens.weight"])


def test_an_untied_head_left_out_is_refused_by_name():
    state = {k: v for k, v in _model(tied=False, seed=0).state_dict().items() if k != "lm_head.weight"}
    with pytest.raises(ModelRejected, match=r"do not fit Qwen2ForCausalLM: missing \['lm_head.weight'\], unexpected \[\]"):
        _load_into(_model(tied=False, seed=1), state)


def test_a_tensor_of_another_shape_is_refused_with_what_torch_says():
    state = dict(_model(tied=False, seed=0).state_dict())
    state["model.norm.weight"] = torch.ones(17)
    with pytest.raises(ModelRejected) as e:
        _load_into(_model(tied=False, seed=1), state)
    assert e.value.message.startswith("the snapshot's weights do not fit Qwen2ForCausalLM: ")
    assert "model.norm.weight" in e.value.message and "size mismatch" in e.value.message


def test_what_torch_says_is_cut_to_2000_characters():
    # Every tensor of another shape: torch names each one, far more than a status message should carry.
    state = {k: torch.ones(*(n + 1 for n in t.shape)) for k, t in _model(tied=False, seed=0).state_dict().items()}
    with pytest.raises(ModelRejected) as e:
        _load_into(_model(tied=False, seed=1), state)
    prefix = "the snapshot's weights do not fit Qwen2ForCausalLM: "
    assert e.value.message.startswith(prefix + "Error(s) in loading state_dict")
    assert len(e.value.message) == len(prefix) + 2000


def _backend(model: torch.nn.Module, **kwargs) -> TorchBackend:
    backend = TorchBackend(tile_tokens=64, **kwargs)
    backend.prepare(model.config.to_dict(), config_hash=None, key="0", digest="d0", state_dict=model.state_dict())
    return backend


def test_the_resident_weights_loaded_again_copy_nothing():
    model = _model(tied=False, seed=0)
    backend = _backend(model)
    swaps = backend.swaps
    backend.load("0", "d0", model.state_dict())
    assert backend.swaps == swaps
    backend.load("1", "d1", _model(tied=False, seed=1).state_dict())
    assert backend.swaps == swaps + 1 and (backend.resident_key, backend.resident_digest) == ("1", "d1")


def test_the_model_is_built_with_the_attention_asked_for_and_says_how_it_serves(caplog):
    with caplog.at_level(logging.INFO, logger="logit_service.backends.torch_backend"):
        backend = _backend(_model(tied=False, seed=0), attn_implementation="eager")
    assert backend.model.config._attn_implementation == "eager"
    (built,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("built ")]
    assert built.startswith("built Qwen2ForCausalLM (float32, attention eager, ")
    assert built.endswith("; sequences share fixed-shape tiles")


@pytest.mark.parametrize("batch_invariant", [True, False], ids=["tiles", "batched-by-length"])
def test_a_backend_built_and_scoring_under_another_default_device_gives_the_same_bits(batch_invariant):
    # A trainer may have called torch.set_default_device("cuda") on the thread that drives an in-process
    # backend; "meta" (a device without data) stands in for it: a model or a staging tensor put there
    # could not be read back.
    import numpy as np

    from logit_service.backends.torch_backend import ScoreItem

    source = _model(tied=False, seed=0)
    items = [ScoreItem(np.arange(3, 3 + n, dtype=np.int64) % 64, np.arange(1, n)) for n in (9, 23)]
    answers = []
    for default_device in ("cpu", "meta"):
        backend = TorchBackend(dtype="float32", device="cpu", batch_invariant=batch_invariant)
        with torch.device(default_device):
            backend.ensure_model(source.config.to_dict())
            backend.load("0", "digest", source.state_dict())
            answers.append(backend.score(items))
        assert backend.tiled is batch_invariant
    for plain, elsewhere in zip(*answers):
        assert plain.shape == elsewhere.shape and plain.tobytes() == elsewhere.tobytes()


class _SteppingClock:
    """perf_counter that moves one second per reading: each timed swap then lasts exactly one second."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_the_swap_time_adds_up_over_swaps(monkeypatch):
    from logit_service.backends import torch_backend

    backend = _backend(_model(tied=False, seed=0))
    swaps, seconds = backend.swaps, backend.swap_seconds
    monkeypatch.setattr(torch_backend, "time", _SteppingClock())
    for seed in (1, 2):
        backend.load(str(seed), f"d{seed}", _model(tied=False, seed=seed).state_dict())
    assert backend.swaps == swaps + 2
    assert backend.swap_seconds == seconds + 2.0  # a total (the metric is a counter), not the last swap's


def test_a_tile_probe_that_raises_serves_each_sequence_alone_and_says_why(monkeypatch):
    from logit_service.backends import torch_backend

    def refuses(*_args, **_kwargs):
        raise RuntimeError("this forward refuses the tile's shape")

    monkeypatch.setattr(torch_backend, "tiles_hold", refuses)
    backend = _backend(_model(tied=False, seed=0))
    assert not backend.tiled
    assert backend.untiled_reason == "the tile probe fails: RuntimeError: this forward refuses the tile's shape"


def test_a_model_transformers_cannot_build_as_a_causal_lm_is_refused_naming_the_attention_chosen():
    from logit_service.backends.torch_backend import build_model

    t5 = {"model_type": "t5", "vocab_size": 64, "d_model": 16}  # an encoder-decoder: no causal LM class
    with pytest.raises(ModelRejected, match=r"^transformers cannot build 't5' as a causal LM with attention "
                       r"implementation transformers' default: "):
        build_model(t5, dtype="float32", device="cpu", attn_implementation=None)
    with pytest.raises(ModelRejected, match=r"^transformers cannot build 't5' as a causal LM with attention "
                       r"implementation 'eager': "):
        build_model(t5, dtype="float32", device="cpu", attn_implementation="eager")
