"""Served log-probs equal a direct forward under the requested version's weights, over real gRPC."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput, TokenSource
from tests.helpers import NUM_VERSIONS, random_tokens


@pytest.fixture(params=[False, True], ids=["full snapshots", "compact snapshots"])
def served(request, make_server, snapshot_dir, trained):
    """A server holding every trained version, each published after the previous was already served;
    with compact snapshots, every version but the keyframe 0 and the newest is a delta when scored."""
    # No RAM cache with compact snapshots, so every version is restored from its delta when scored.
    compact = {"compact_snapshots": True, "compact_keyframe_interval": NUM_VERSIONS + 1, "cache_bytes": 0} if request.param else {}
    server = make_server(snapshot_dir, retention_window=NUM_VERSIONS, **compact)
    client = LogitClient(server.address, timeout_s=60)
    for version in range(NUM_VERSIONS):
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    if request.param:
        assert server.running.store.compactor.wait_idle(120)
        deltas = sorted(p.parent.name for p in snapshot_dir.glob("v*/model.safetensors.zdelta"))
        assert deltas == [f"v{v:08d}" for v in range(1, NUM_VERSIONS - 1)]
    yield client
    client.close()


def test_every_version_matches_a_direct_forward_after_later_versions_were_published(served, trained):
    worst = 0.0
    for version in range(NUM_VERSIONS):
        tokens = [random_tokens(n, seed=version * 10 + n) for n in (17, 64, 33)]
        result = served.score([SequenceInput(t, spans=((version, 1, len(t)),), sample_id=f"s{i}") for i, t in enumerate(tokens)])
        for seq, t in zip(result.sequences, tokens):
            expected = trained.reference(version, t)
            assert np.isnan(seq.logprobs[0])
            error = np.abs(seq.logprobs[1:] - expected[1:]).max()
            worst = max(worst, float(error))
            assert (seq.sources[1:] == TokenSource.EXACT).all()
            assert (seq.served_versions[1:] == version).all()
    print(f"\nmax |served - direct forward| over {NUM_VERSIONS} versions (fp32): {worst:.3e}")
    # 9.5e-7 is what fp32 on CPU gives; 2e-6 leaves room for other CPUs' kernels, and a wrong version
    # or a skipped transform is 1e-3 or more away (test_versions_differ_so_the_check_can_fail).
    assert worst <= 2e-6


def test_versions_differ_so_the_check_can_fail(trained):
    tokens = random_tokens(40, seed=3)
    assert np.abs(trained.reference(0, tokens)[1:] - trained.reference(NUM_VERSIONS - 1, tokens)[1:]).max() > 1e-3


def test_one_sequence_crossing_three_versions(served, trained):
    tokens = random_tokens(90, seed=7)
    spans = ((1, 10, 40), (2, 40, 70), (4, 70, 90))
    result = served.score([SequenceInput(tokens, spans=spans, sample_id="partial")])
    seq = result.sequences[0]
    assert seq.sample_id == "partial"
    assert np.isnan(seq.logprobs[:10]).all()
    for version, start, end in spans:
        expected = trained.reference(version, tokens)[start:end]
        np.testing.assert_allclose(seq.logprobs[start:end], expected, atol=2e-6, rtol=0)
        assert (seq.served_versions[start:end] == version).all()
    assert [s.requested_version for s in seq.spans] == [1, 2, 4]
    digests = {s.snapshot_digest for s in seq.spans}
    assert len(digests) == 3 and all(len(d) == 64 for d in digests)


def test_alone_or_batched_with_other_lengths_gives_identical_answers(served):
    # Three sequences of different lengths per version, so each version's forward is shared (with
    # one version per sequence, batching would have nothing to change).
    lengths = (5, 48, 31, 48, 120, 2)
    sequences = [
        SequenceInput(random_tokens(n, seed=100 + i), spans=((3 + i % 2, 1, n),), sample_id=str(i))
        for i, n in enumerate(lengths)
    ]
    batched = served.score(sequences)
    for i, seq in enumerate(sequences):
        alone = served.score([seq]).sequences[0]
        assert np.array_equal(alone.logprobs, batched.sequences[i].logprobs, equal_nan=True)
        assert batched.sequences[i].sample_id == str(i)


def test_temperature_divides_the_logits(served, trained):
    tokens = random_tokens(30, seed=11)
    result = served.score([SequenceInput(tokens, spans=((3, 1, 30),))], temperature=0.7)
    np.testing.assert_allclose(result.sequences[0].logprobs[1:], trained.reference(3, tokens, temperature=0.7)[1:], atol=2e-6, rtol=0)


def test_a_batch_larger_than_one_call_is_split_and_joined_in_order(served):
    sequences = [
        SequenceInput(random_tokens(30 + i, seed=200 + i), spans=((i % NUM_VERSIONS, 1, 30 + i),), sample_id=f"s{i}")
        for i in range(7)
    ]
    whole = served.score(sequences)
    split = served.score(sequences, max_call_tokens=70, max_parallel_calls=3)  # 2 sequences per call at most
    assert [s.sample_id for s in split.sequences] == [f"s{i}" for i in range(7)]
    assert split.tokens_scored == whole.tokens_scored
    for a, b in zip(whole.sequences, split.sequences):
        assert np.array_equal(a.logprobs, b.logprobs, equal_nan=True)


def test_the_asyncio_client_splits_the_same_way(served):
    import asyncio

    from logit_client import AsyncLogitClient

    address = served.targets[0]
    sequences = [SequenceInput(random_tokens(40, seed=300 + i), spans=((1, 1, 40),), sample_id=str(i)) for i in range(5)]

    async def run():
        async with AsyncLogitClient(address) as client:
            return await client.score(sequences, max_call_tokens=80, max_parallel_calls=2)

    result = asyncio.run(run())
    expected = served.score(sequences)
    assert [s.sample_id for s in result.sequences] == [str(i) for i in range(5)]
    for a, b in zip(expected.sequences, result.sequences):
        assert np.array_equal(a.logprobs, b.logprobs, equal_nan=True)
