"""`known_head` reproduces each known post-head transform exactly as the model's own forward applies it.

The backend scores with the lm_head followed by these transforms instead of the model's full forward, so
a transform left out or applied with the wrong value serves wrong log-probs with no error. Each case
builds a tiny model of the architecture whose config carries the transform, with a value large enough
that the transform moves every logit, and compares the head's logits with the model's own, bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from logit_service.backends.logprobs import known_head
from tests.tiny_architectures import build_trained, tiny_architecture

CASES = [
    pytest.param("gemma2", "Gemma2ForCausalLM", {"final_logit_softcapping": 2.0}, id="gemma2-softcap"),
    pytest.param("cohere", "CohereForCausalLM", {"logit_scale": 0.25}, id="cohere-logit_scale"),
    pytest.param("granite", "GraniteForCausalLM", {"logits_scaling": 4.0}, id="granite-logits_scaling"),
    pytest.param("llama", "LlamaForCausalLM", {}, id="llama-none"),
]


def _model(model_type: str, class_name: str, overrides: dict) -> nn.Module:
    arch = tiny_architecture(model_type, class_name)
    if arch.config is None:
        pytest.skip(arch.reason)
    arch = type(arch)(arch.model_type, arch.class_name, {**arch.config, **overrides}, arch.reason)
    return build_trained(arch)


@pytest.mark.parametrize(("model_type", "class_name", "overrides"), CASES)
def test_head_logits_equal_the_models_own(model_type, class_name, overrides):
    model = _model(model_type, class_name, overrides)
    for name, value in overrides.items():
        assert getattr(model.config, name) == value, f"{name} did not reach the config"
    ids = torch.randint(0, model.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True, use_cache=False)
        own = out.logits[0]
        hidden = out.hidden_states[-1][0]  # after the final norm, what the lm_head sees
        served = known_head(model)(hidden)
        bare = model.get_output_embeddings()(hidden)
    assert torch.equal(served, own), f"max |head − forward| {(served - own).abs().max().item():.3e}"
    if overrides:  # the transform matters at this value: leaving it out would be caught above
        assert (bare - own).abs().max().item() > 1e-3


def test_a_model_without_output_embeddings_is_named_in_the_error():
    class NoHead(nn.Module):
        config = None

        def get_output_embeddings(self):
            return None

    with pytest.raises(ValueError, match="NoHead exposes no output embeddings"):
        known_head(NoHead())
