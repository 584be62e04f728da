"""`--backend vllm` against `--backend torch` on the same versions, over real gRPC.

Tolerances per dtype (max |vLLM − torch| of a token log-prob): fp32 1e-5 (same math, other kernels;
measured 9.5e-7); bf16 5e-2 (both round activations to bf16, at different points; measured 5.2e-3).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

from logit_client import InvalidRequest, LogitClient, SequenceInput
from logit_service.config import ServerConfig
from logit_service.server.app import ServerThread
from tests.vllm_engine.helpers import NUM_VERSIONS, VOCAB

TOLERANCE = {"float32": 1e-5, "bfloat16": 5e-2}


@dataclass
class Servers:
    dtype: str
    vllm: LogitClient
    torch: LogitClient
    vllm_server: ServerThread
    engine_log: list[str]  # what the vLLM backend logged while its server started and published


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def servers(request, versions, tmp_path_factory):
    """A vLLM-backed and a torch-backed server holding the same versions, in `dtype`."""
    dtype = request.param
    started, clients = {}, {}
    engine_log = _Collect()
    backend_logger = logging.getLogger("logit_service.backends.vllm_backend")
    level = backend_logger.level
    backend_logger.addHandler(engine_log)
    backend_logger.setLevel(logging.INFO)
    try:
        for backend in ("vllm", "torch"):
            snapshot_dir = tmp_path_factory.mktemp(f"{backend}-{dtype}")
            config = ServerConfig(
                snapshot_dir=snapshot_dir, port=0, backend=backend, dtype=dtype, retention_window=NUM_VERSIONS,
                ewma_enabled=False,
            )
            server = ServerThread(config).start()
            started[backend] = server
            client = LogitClient(server.address, timeout_s=300)
            for version in range(NUM_VERSIONS):
                client.publish(version, versions.states[version], snapshot_dir, model_config=versions.config)
            clients[backend] = client
    finally:
        backend_logger.removeHandler(engine_log)
        backend_logger.setLevel(level)
    yield Servers(dtype, clients["vllm"], clients["torch"], started["vllm"], engine_log.messages)
    for client in clients.values():
        client.close()
    for server in started.values():
        server.stop()
    import gc

    gc.collect()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


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
    dtype, vllm_client, torch_client = servers.dtype, servers.vllm, servers.torch
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
    dtype, vllm_client, torch_client = servers.dtype, servers.vllm, servers.torch
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
    vllm_client = servers.vllm
    with pytest.raises(InvalidRequest, match="temperature 1.0 only"):
        vllm_client.score(_batch(2)[:1], temperature=0.7)


def test_the_engine_start_is_logged_with_its_dtype_and_architecture(servers):
    assert f"started a vLLM engine ({servers.dtype}) for qwen2" in servers.engine_log


def test_a_version_is_written_into_the_engine_once_while_it_stays_resident(servers):
    backend = servers.vllm_server.running.engine.backend
    first, second = ([SequenceInput(np.arange(2, 30) % VOCAB, spans=((v, 1, 28),))] for v in (0, 1))
    servers.vllm.score(first)
    assert (backend.resident_key, backend.resident_digest) == ("0", servers.vllm.get_version(0).digest)
    swaps, seconds = backend.swaps, backend.swap_seconds
    assert swaps >= 1 and seconds > 0
    servers.vllm.score(first)  # resident: nothing is written
    assert (backend.swaps, backend.swap_seconds) == (swaps, seconds)
    servers.vllm.score(second)
    assert backend.swaps == swaps + 1 and backend.swap_seconds > seconds
    assert backend.resident_key == "1"
