"""`--backend vllm` against `--backend torch` on the same versions, over real gRPC.

Tolerances per dtype (max |vLLM − torch| of a token log-prob): fp32 1e-5 (same math, other kernels;
measured 9.5e-7); bf16 5e-2 (both round activations to bf16, at different points; measured 5.2e-3).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from logit_client import InvalidRequest, LogitClient, SequenceInput
from logit_service.config import ServerConfig
from logit_service.server.app import ServerThread
from tests.vllm_engine.helpers import NUM_VERSIONS, VOCAB

TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def servers(request, versions, tmp_path_factory):
    """A vLLM-backed and a torch-backed server holding the same versions, in `dtype`."""
    dtype = request.param
    started, clients = [], {}
    for backend in ("vllm", "torch"):
        snapshot_dir = tmp_path_factory.mktemp(f"{backend}-{dtype}")
        config = ServerConfig(
            snapshot_dir=snapshot_dir, port=0, backend=backend, dtype=dtype, retention_window=NUM_VERSIONS,
            ewma_enabled=False,
        )
        server = ServerThread(config).start()
        started.append(server)
        client = LogitClient(server.address, timeout_s=300)
        for version in range(NUM_VERSIONS):
            client.publish(version, versions.states[version], snapshot_dir, model_config=versions.config)
        clients[backend] = client
    yield dtype, clients["vllm"], clients["torch"]
    for client in clients.values():
        client.close()
    for server in started:
        server.stop()
    import gc

    gc.collect()


def _batch(seed: int) -> list[SequenceInput]:
    rng = np.random.default_rng(seed)
    sequences = []
    for i, n in enumerate((9, 40, 77, 130)):
        tokens = rng.integers(0, VOCAB, size=n)
        cuts = sorted(rng.choice(np.arange(2, n - 1), size=2, replace=False).tolist())
        spans = ((i % NUM_VERSIONS, 1, cuts[0]), ((i + 1) % NUM_VERSIONS, cuts[0], cuts[1]), ((i + 2) % NUM_VERSIONS, cuts[1], n))
        sequences.append(SequenceInput(tokens, spans=spans, sample_id=f"s{i}"))
    return sequences


def test_vllm_answers_match_the_torch_backend_within_the_dtype_tolerance(servers, report):
    dtype, vllm_client, torch_client = servers
    batch = _batch(0)
    fast, exact = vllm_client.score(batch), torch_client.score(batch)
    assert (fast.backend, fast.numerics) == ("vllm", "inference")
    assert (exact.backend, exact.numerics) == ("torch", "training")
    worst, mean = 0.0, []
    for a, b in zip(fast.sequences, exact.sequences):
        assert (a.served_versions == b.served_versions).all()
        assert [s.snapshot_digest for s in a.spans] == [s.snapshot_digest for s in b.spans]
        diff = np.abs(a.logprobs[a.mask].astype(np.float64) - b.logprobs[b.mask])
        worst, mean = max(worst, float(diff.max())), mean + [diff]
    report(f"[{dtype}] vllm vs torch backend: max |diff| {worst:.3e}, mean {np.concatenate(mean).mean():.3e}")
    assert worst <= TOLERANCE[dtype]


def test_concurrent_requests_across_versions_never_mix_versions(servers, versions):
    dtype, vllm_client, torch_client = servers
    rng = np.random.default_rng(1)
    requests = [
        [SequenceInput(rng.integers(0, VOCAB, size=60), spans=((v, 1, 60),), sample_id=f"{k}-{v}")]
        for k in range(3) for v in range(NUM_VERSIONS)
    ]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        answers = list(pool.map(vllm_client.score, requests))
    tolerance = TOLERANCE[dtype]
    for request, answer in zip(requests, answers):
        expected = torch_client.score(request).sequences[0]
        got = answer.sequences[0]
        v = request[0].spans[0][0]
        assert (got.served_versions[1:] == v).all()
        assert np.abs(got.logprobs[1:] - expected.logprobs[1:]).max() <= tolerance
    # The check can fail: neighbouring versions differ by more than the tolerance.
    seq = requests[0][0]
    other = torch_client.score([SequenceInput(seq.token_ids, spans=((1, 1, 60),))]).sequences[0]
    first = torch_client.score(requests[0]).sequences[0]
    if dtype == "float32":
        assert np.abs(other.logprobs[1:] - first.logprobs[1:]).max() > 10 * tolerance


def test_a_temperature_other_than_one_is_refused_with_a_clear_error(servers):
    _, vllm_client, _ = servers
    with pytest.raises(InvalidRequest, match="temperature 1.0 only"):
        vllm_client.score(_batch(2)[:1], temperature=0.7)
