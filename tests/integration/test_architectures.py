"""Every causal-LM architecture transformers can build tiny is served equal to its own direct forward.

The matrix runs the backend exactly as the server does (build from config, load the version's weights,
probe, serve); a representative subset also goes over real gRPC with safetensors snapshots published
through the client. Architectures that cannot be built tiny on a CPU are skipped with the reason.
`scripts/architecture_table.py` prints the same matrix as a table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from logit_client import LogitClient, SequenceInput, TokenSource
from tests.tiny_architectures import (
    VOCAB,
    build_trained,
    causal_lm_architectures,
    direct_logprobs,
    measure,
    tiny_architecture,
)

TOLERANCE = 1e-5  # fp32: observed ≤ 1e-6; a skipped post-head transform moves log-probs by ≥ 1e-2

# No path of these reproduces the model's own forward, so the server refuses them at publish (a clear
# INVALID_ARGUMENT) rather than serving wrong numbers. A new entry here needs a reason, not a shrug.
REFUSED = {
    "prophetnet": "its forward predicts n future tokens per position (ngram streams): logits are not per position",
    "reformer": "LSH attention draws fresh random rotations on every forward: its own forward is not deterministic",
}

ARCHITECTURES = causal_lm_architectures()


@pytest.mark.parametrize(("model_type", "class_name"), ARCHITECTURES, ids=[m for m, _ in ARCHITECTURES])
def test_served_logprobs_match_the_direct_forward(model_type, class_name):
    arch = tiny_architecture(model_type, class_name)
    if arch.config is None:
        pytest.skip(arch.reason)
    measured = measure(arch)
    if measured.path == "skipped":
        pytest.skip(measured.note)
    if model_type in REFUSED:
        assert measured.path == "refused", f"{model_type} is served now ({measured.path}): take it off REFUSED"
        return
    assert measured.path != "refused", measured.note
    print(f"\n{model_type}: path {measured.path}, max |served − direct| {measured.max_error:.2e} ({measured.note})")
    assert measured.max_error <= TOLERANCE, f"{model_type} via {measured.path}: {measured.max_error:.3e} ({measured.note})"


# --- over the wire ------------------------------------------------------------------------------------

WIRE = [
    pytest.param("qwen2", {"tie_word_embeddings": True}, "lean", id="qwen2-tied"),
    pytest.param("llama", {}, "lean", id="llama"),
    pytest.param("gemma2", {}, "lean", id="gemma2-softcap-sliding"),
    pytest.param("cohere", {"logit_scale": 0.25}, "lean", id="cohere-logit_scale"),
    pytest.param("granite", {"logits_scaling": 4.0}, "lean", id="granite-logits_scaling"),
    pytest.param("mixtral", {}, "lean", id="mixtral-moe"),
    pytest.param("qwen2_moe", {}, "lean", id="qwen2_moe"),
    pytest.param("mistral", {}, "lean", id="mistral-sliding"),
    pytest.param("llama4_text", {}, "logits_to_keep", id="llama4_text-fallback"),
]


@pytest.mark.parametrize(("model_type", "overrides", "path"), WIRE)
def test_over_grpc_every_version_matches_its_direct_forward(make_server, snapshot_dir, model_type, overrides, path):
    arch = tiny_architecture(model_type, dict(ARCHITECTURES)[model_type])
    arch = type(arch)(arch.model_type, arch.class_name, {**arch.config, **overrides})
    model = build_trained(arch, seed=3)
    states = [{k: v.detach().clone() for k, v in model.state_dict().items()}]
    with torch.no_grad():  # a second version: every weight moved
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    states.append({k: v.detach().clone() for k, v in model.state_dict().items()})

    server = make_server(snapshot_dir)  # defaults: attention implementation chosen by transformers
    tokens = [np.random.default_rng(s).integers(0, VOCAB, size=n).astype(np.int64) for s, n in ((0, 40), (1, 23))]
    with LogitClient(server.address, timeout_s=120) as client:
        for version, state in enumerate(states):
            client.publish(version, state, snapshot_dir, model_config=arch.config)
        assert server.running.engine.backend.path.name == path
        result = client.score([SequenceInput(t, spans=((v, 1, len(t)),)) for v in (0, 1) for t in tokens])

    worst = 0.0
    for (version, t), seq in zip([(v, t) for v in (0, 1) for t in tokens], result.sequences):
        model.load_state_dict(states[version])
        expected = direct_logprobs(model, torch.from_numpy(t)).numpy()
        assert (seq.sources[1:] == TokenSource.EXACT).all()
        worst = max(worst, float(np.abs(seq.logprobs[1:] - expected).max()))
    print(f"\n{model_type} over gRPC ({path}): max |served − direct| {worst:.2e}")
    assert worst <= TOLERANCE
