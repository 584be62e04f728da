"""Calls of many callers that arrive together share forwards, over real gRPC, and every answer is
bit-identical to its sequence scored alone; deadlines and errors stay per call. While one version is
scored, the next one a batch needs is read and verified (prefetch)."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput, TokenSource
from logit_service import errors
from tests.helpers import VOCAB, ForwardGate, random_tokens

WAIT_S = 120  # bound on every wait for a condition; never reached when the code works


class ManualClock:
    """The batcher's clock, moved only by the test: its waits and the compute times it measures follow
    what the test does, not how fast the machine is."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition, not timing the code under test


@pytest.fixture
def served(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=5)
    with LogitClient(server.address, timeout_s=60) as client:
        for version in range(3):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        client.score([SequenceInput(random_tokens(8, seed=0), spans=((0, 1, 8),))])  # builds and warms the model
    return server


def _requests() -> list[list[SequenceInput]]:
    """Mixed lengths (several in one bucket, several buckets), versions 0-2, one crossing two versions."""
    lengths = [5, 17, 40, 33, 64, 97, 130, 2, 48, 41, 70, 23]
    out = []
    for i, n in enumerate(lengths):
        tokens = random_tokens(n, seed=500 + i)
        if n >= 40 and i % 3 == 0:
            spans = ((0, 1, n // 2), (2, n // 2, n))
        else:
            spans = ((i % 3, 1, n),)
        out.append([SequenceInput(tokens, spans=spans, sample_id=f"c{i}")])
    return out


def test_concurrent_callers_share_forwards_and_get_their_alone_answers_bit_for_bit(served, trained):
    requests = _requests()
    batcher = served.running.batcher
    gate = ForwardGate(served)
    try:
        with ThreadPoolExecutor(len(requests) + 1) as pool:
            first = pool.submit(_score, served.address, requests[0])
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            batches_before = batcher.batches
            rest = [pool.submit(_score, served.address, r) for r in requests[1:]]
            _wait_for(lambda: batcher.queued == len(requests) - 1, "every other call to queue behind the held forward")
            assert batcher.in_server == len(requests)  # the held call and the queued ones
            gate.release.set()
            together = [first.result(WAIT_S)] + [f.result(WAIT_S) for f in rest]
    finally:
        gate.remove()
    # The held call went alone; every other call was answered by one shared engine call.
    assert batcher.batches == batches_before + 1
    # Every call counted out once answered: a caller that comes alone next is seen as alone, and starts
    # at once instead of waiting for company.
    _wait_for(lambda: batcher.in_server == 0, "every answered call to leave the count")

    for request, result in zip(requests, together):
        alone = _score(served.address, request)
        (seq,), (alone_seq,) = result.sequences, alone.sequences
        assert seq.logprobs.tobytes() == alone_seq.logprobs.tobytes(), f"{seq.sample_id}: batched != alone"
        assert seq.sample_id == request[0].sample_id
        for version, start, end in request[0].spans:
            expected = trained.reference(version, request[0].token_ids)[start:end]
            np.testing.assert_allclose(seq.logprobs[start:end], expected, rtol=0, atol=1e-5)
            assert (seq.sources[start:end] == TokenSource.EXACT).all()
            assert (seq.served_versions[start:end] == version).all()


def _score(address: str, sequences: list[SequenceInput], timeout_s: float = 60):
    with LogitClient(address, timeout_s=timeout_s, max_retries=0) as client:
        return client.score(sequences)


def test_in_a_shared_batch_a_bad_call_and_an_expired_call_fail_alone(served, trained):
    tokens = random_tokens(30, seed=9)
    good = [SequenceInput(tokens, spans=((1, 1, 30),), sample_id="good")]
    bad_tokens = tokens.copy()
    bad_tokens[4] = VOCAB  # outside the vocabulary: INVALID_ARGUMENT for this caller only
    bad = [SequenceInput(bad_tokens, spans=((1, 1, 30),), sample_id="bad")]
    gate = ForwardGate(served)
    try:
        with ThreadPoolExecutor(4) as pool:
            holder = pool.submit(_score, served.address, good)
            assert gate.entered.wait(WAIT_S)
            expiring = pool.submit(_score, served.address, good, 1.0)  # its deadline passes while it is queued
            failing = pool.submit(_score, served.address, bad)
            fine = pool.submit(_score, served.address, good)
            _wait_for(lambda: served.running.batcher.queued == 3, "three calls to queue")
            with pytest.raises(errors.DeadlineExceeded):
                expiring.result(WAIT_S)  # the client gives up while the forward is held
            gate.release.set()
            with pytest.raises(errors.InvalidRequest, match="outside the vocabulary"):
                failing.result(WAIT_S)
            answers = [holder.result(WAIT_S), fine.result(WAIT_S)]
    finally:
        gate.remove()
    expected = trained.reference(1, tokens)[1:]
    for result in answers:
        np.testing.assert_allclose(result.sequences[0].logprobs[1:], expected, rtol=0, atol=1e-5)
    assert answers[0].sequences[0].logprobs.tobytes() == answers[1].sequences[0].logprobs.tobytes()


def test_when_a_shared_forward_fails_every_call_of_the_batch_gets_the_error(served):
    """A bug in a forward (here the model's first layer raising) is every batched call's answer: each
    caller gets INTERNAL at once, none is left waiting for an answer that never comes."""
    request = [SequenceInput(random_tokens(20, seed=11), spans=((0, 1, 20),), sample_id="f")]
    gate = ForwardGate(served)

    def fail(_module, _args):
        raise RuntimeError("the forward broke")

    failing = served.running.engine.backend.model.model.layers[0].register_forward_pre_hook(fail)
    batcher = served.running.batcher
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(_score, served.address, request)
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            batches_before = batcher.batches
            # shorter than WAIT_S: a call left unanswered shows as DEADLINE_EXCEEDED, not as a hang
            queued = [pool.submit(_score, served.address, request, 30) for _ in range(2)]
            _wait_for(lambda: batcher.queued == 2, "two calls to queue behind the held forward")
            gate.release.set()
            outcomes = []
            for future in [first, *queued]:
                with pytest.raises(errors.LogitServiceError) as caught:
                    future.result(WAIT_S)
                outcomes.append((caught.value.code, "see the server log" in caught.value.message))
    finally:
        failing.remove()
        gate.remove()
    assert batcher.batches == batches_before + 1  # the two queued calls failed in one shared batch
    assert outcomes == [(grpc.StatusCode.INTERNAL, True)] * 3
    assert _score(served.address, request).sequences[0].logprobs.shape == (20,)  # and the server serves on


def test_in_a_shared_forward_a_call_whose_tokens_give_non_finite_logprobs_fails_alone(served, snapshot_dir, trained):
    """Non-finite log-probs are one caller's error: the batch is scored again call by call, so the others
    get the very answers they get alone."""
    weights = {k: v.clone() for k, v in trained.states[2].items()}
    weights["model.embed_tokens.weight"][7] = float("inf")  # any sequence holding token 7 turns NaN from there
    tokens = random_tokens(24, seed=21)
    tokens[tokens == 7] = 8
    bad_tokens = tokens.copy()
    bad_tokens[3] = 7
    good = [SequenceInput(tokens, spans=((3, 1, 24),), sample_id="good")]
    bad = [SequenceInput(bad_tokens, spans=((3, 1, 24),), sample_id="bad")]
    with LogitClient(served.address, timeout_s=60) as client:
        client.publish(3, weights, snapshot_dir, model_config=trained.config)
    alone = _score(served.address, good).sequences[0].logprobs
    batcher = served.running.batcher
    gate = ForwardGate(served)
    try:
        with ThreadPoolExecutor(3) as pool:
            holder = pool.submit(_score, served.address, [SequenceInput(tokens, spans=((0, 1, 24),))])
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            batches_before = batcher.batches
            failing = pool.submit(_score, served.address, bad)
            fine = pool.submit(_score, served.address, good)
            _wait_for(lambda: batcher.queued == 2, "both calls to queue behind the held forward")
            gate.release.set()
            holder.result(WAIT_S)
            with pytest.raises(errors.LogitServiceError) as caught:
                failing.result(WAIT_S)
            answer = fine.result(WAIT_S).sequences[0]
    finally:
        gate.remove()
    assert batcher.batches == batches_before + 1  # the two calls shared one engine call
    assert caught.value.code == grpc.StatusCode.INTERNAL and "non-finite" in caught.value.message
    assert np.isfinite(answer.logprobs[1:]).all()
    assert answer.logprobs.tobytes() == alone.tobytes()


def test_a_batch_of_only_a_bad_call_fails_it_alone_while_others_wait(make_server, snapshot_dir, trained):
    """A batch in which no call is left to score (here one call, its token outside the vocabulary) still
    answers that call with its own error, while calls queued after it (the versions they need are read
    ahead) are scored next."""
    server = make_server(snapshot_dir, max_tokens_per_request=64)  # two calls of 40 tokens: two batches
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        client.score([SequenceInput(random_tokens(8, seed=0), spans=((0, 1, 8),))])  # builds the model
    tokens = random_tokens(40, seed=31)
    bad_tokens = tokens.copy()
    bad_tokens[5] = VOCAB
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(3) as pool:
            holder = pool.submit(_score, server.address, [SequenceInput(random_tokens(8, seed=1), spans=((0, 1, 8),))])
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            failing = pool.submit(_score, server.address, [SequenceInput(bad_tokens, spans=((0, 1, 40),))])
            _wait_for(lambda: server.running.batcher.queued == 1, "the bad call to queue")
            fine = pool.submit(_score, server.address, [SequenceInput(tokens, spans=((0, 1, 40),))])
            _wait_for(lambda: server.running.batcher.queued == 2, "the good call to queue after it")
            gate.release.set()
            holder.result(WAIT_S)
            with pytest.raises(errors.InvalidRequest, match="outside the vocabulary"):
                failing.result(WAIT_S)
            answer = fine.result(WAIT_S).sequences[0]
    finally:
        gate.remove()
    np.testing.assert_allclose(answer.logprobs[1:], trained.reference(0, tokens)[1:], rtol=0, atol=1e-5)


def test_the_next_version_is_read_while_the_current_one_is_scored(make_server, snapshot_dir, trained):
    # No RAM cache: a version that is not resident must be read from disk before its forward.
    server = make_server(snapshot_dir, retention_window=5, cache_bytes=0, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=60) as client:
        for version in range(2):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    store, prefetcher = server.running.store, server.running.engine.prefetcher
    assert server.running.engine.backend.resident_key == "0"  # the first publish built the model with it
    loads_before = store.loads
    tokens = random_tokens(50, seed=4)
    request = [SequenceInput(tokens, spans=((0, 1, 25), (1, 25, 50)))]
    seen_while_held: list[int] = []
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(_score, server.address, request)
            assert gate.entered.wait(WAIT_S), "version 0's forward never started"
            # Version 0's forward is held in its first layer: version 1 must be loaded meanwhile.
            _wait_for(lambda: store.loads == loads_before + 1, "version 1 to be loaded during version 0's forward")
            seen_while_held.append(store.loads - loads_before)
            gate.release.set()
            result = call.result(WAIT_S)
    finally:
        gate.remove()
    assert seen_while_held == [1]
    assert prefetcher.used == 1
    assert store.loads == loads_before + 1, "version 1 was read again although it had been read ahead"
    seq = result.sequences[0]
    np.testing.assert_allclose(seq.logprobs[1:25], trained.reference(0, tokens)[1:25], rtol=0, atol=1e-5)
    np.testing.assert_allclose(seq.logprobs[25:50], trained.reference(1, tokens)[25:50], rtol=0, atol=1e-5)
    assert list(seq.served_versions[1:25]) == [0] * 24 and list(seq.served_versions[25:]) == [1] * 25


def test_calls_over_a_batchs_token_budget_go_apart_and_the_later_ones_version_is_read_meanwhile(
    make_server, snapshot_dir, trained
):
    """Two queued calls of 40 tokens under a 60-token budget take an engine call each; while the first
    is scored, the version the second needs is read ahead (the batch tells the engine what is queued)."""
    server = make_server(snapshot_dir, retention_window=5, cache_bytes=0, ewma_enabled=False, max_tokens_per_request=60)
    with LogitClient(server.address, timeout_s=60) as client:
        for version in range(2):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    store, batcher, prefetcher = server.running.store, server.running.batcher, server.running.engine.prefetcher
    assert server.running.engine.backend.resident_key == "0"
    holder = [SequenceInput(random_tokens(20, seed=1), spans=((0, 1, 20),), sample_id="holder")]
    first = [SequenceInput(random_tokens(40, seed=2), spans=((0, 1, 40),), sample_id="first")]
    second = [SequenceInput(random_tokens(40, seed=3), spans=((1, 1, 40),), sample_id="second")]
    gate = ForwardGate(server, holds=2)
    try:
        with ThreadPoolExecutor(3) as pool:
            held = pool.submit(_score, server.address, holder)
            assert gate.entries[0].wait(WAIT_S), "the holder's forward never started"
            batches_before, loads_before = batcher.batches, store.loads
            calls = [pool.submit(_score, server.address, first)]
            _wait_for(lambda: batcher.queued == 1, "the first call to queue")
            calls.append(pool.submit(_score, server.address, second))
            _wait_for(lambda: batcher.queued == 2, "the second call to queue")
            gate.releases[0].set()
            assert gate.entries[1].wait(WAIT_S), "the first call's forward never started"
            # The first call's forward is held: version 1 is read meanwhile, since the second call waits for it.
            _wait_for(lambda: store.loads == loads_before + 1, "version 1 to be read during the first call's forward")
            gate.releases[1].set()
            answers = [held.result(WAIT_S)] + [c.result(WAIT_S) for c in calls]
    finally:
        gate.remove()
    assert [a.sequences[0].sample_id for a in answers] == ["holder", "first", "second"]
    assert batcher.batches == batches_before + 2  # the first call alone, then the second alone
    assert prefetcher.used == 1 and store.loads == loads_before + 1
    assert (answers[2].sequences[0].served_versions[1:] == 1).all()


def test_a_sequence_alone_among_8_concurrent_callers_and_in_a_large_request_gets_the_same_bits(make_server, snapshot_dir, trained):
    """Alone the sequence runs in a shrunk one-row tile where the row-count check allows it; among 8
    callers and in one large request it shares full tiles. The bits must not move, under every version."""
    served = make_server(snapshot_dir, retention_window=5, shrink_partial_tiles=True)
    with LogitClient(served.address, timeout_s=60) as client:
        for version in range(3):
            client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    backend, batcher = served.running.engine.backend, served.running.batcher
    target = random_tokens(40, seed=77)
    company = [random_tokens(n, seed=800 + n) for n in (35, 44, 48, 37, 41, 46, 12, 90, 39, 47, 43)]
    for version in range(3):
        def request(tokens: np.ndarray, name: str) -> list[SequenceInput]:
            return [SequenceInput(tokens, spans=((version, 1, len(tokens)),), sample_id=name)]

        _score(served.address, request(target, "warm"))  # the row-count check of this shape runs once, here
        rows_before = backend.tile_rows_forwarded
        alone = _score(served.address, request(target, "alone")).sequences[0]
        alone_rows = backend.tile_rows_forwarded - rows_before
        assert alone_rows == (1 if backend.row_checks.outcomes.get((48, 1)) else 8)

        callers = [request(target, "target")] + [request(t, f"c{i}") for i, t in enumerate(company[:7])]
        gate = ForwardGate(served)
        try:
            with ThreadPoolExecutor(len(callers) + 1) as pool:
                holder = pool.submit(_score, served.address, request(company[7], "holder"))
                assert gate.entered.wait(WAIT_S), "the holding call never reached the model"
                batches_before = batcher.batches
                futures = [pool.submit(_score, served.address, c) for c in callers]
                _wait_for(lambda: batcher.queued == len(callers), "the 8 callers to queue behind the held forward")
                gate.release.set()
                holder.result(WAIT_S)
                among_callers = futures[0].result(WAIT_S).sequences[0]
                for f in futures[1:]:
                    f.result(WAIT_S)
        finally:
            gate.remove()
        assert batcher.batches == batches_before + 1, "the 8 callers were not scored by one engine call"

        large_request = [s for t in company for s in request(t, "other")]
        large_request.insert(5, request(target, "target")[0])
        in_large = _score(served.address, large_request).sequences[5]

        assert among_callers.logprobs.tobytes() == alone.logprobs.tobytes(), f"version {version}: 8 callers != alone"
        assert in_large.logprobs.tobytes() == alone.logprobs.tobytes(), f"version {version}: large request != alone"
        assert (alone.served_versions[1:] == version).all()
        np.testing.assert_allclose(alone.logprobs[1:], trained.reference(version, target)[1:], rtol=0, atol=1e-5)


def test_a_batch_expecting_several_callers_holds_a_lone_call_until_the_next_arrives(served, batcher_clock):
    """The coalescing wait: once the batcher has seen several callers active, a batch waits for that many
    calls, for at most the window. With the batcher's clock stopped the window never runs out, so the
    wait is seen without timing anything: the first call stays queued until a second arrives, and one
    engine call answers both."""
    batcher = served.running.batcher
    batcher._expected, batcher._recent_s_per_call = 2, deque([1.0])  # as after a batch of two callers' calls
    batches, calls = batcher.batches, batcher.calls
    first_request, second_request = _requests()[:2]
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_score, served.address, first_request)
        _wait_for(lambda: batcher.queued == 1, "the first call to queue")
        assert not first.done()
        second = pool.submit(_score, served.address, second_request)
        answers = [first.result(WAIT_S), second.result(WAIT_S)]
    assert batcher.batches == batches + 1 and batcher.calls == calls + 2
    assert [a.sequences[0].sample_id for a in answers] == ["c0", "c1"]


@pytest.fixture
def batcher_clock(monkeypatch) -> ManualClock:
    """The batcher's clock replaced by one the test moves (or never moves: its windows never run out)."""
    from logit_service.server import batcher as batcher_module

    clock = ManualClock()
    monkeypatch.setattr(batcher_module, "time", clock)
    return clock


def _burst_bounds_out_of_the_way(batcher) -> None:
    """A burst gap and window longer than any wait of a test, and no bound from a batch's compute."""
    batcher.burst_gap_s = batcher.coalesce_window_s = WAIT_S
    batcher._last_batch_s = 1e6


@pytest.fixture
def one_version(make_server, snapshot_dir, trained):
    """A server with version 0 built and warm; tiles of 2 rows, so two sequences of a bucket fill one."""
    server = make_server(snapshot_dir, tile_rows=2, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        client.score([SequenceInput(random_tokens(8, seed=0), spans=((0, 1, 8),))])
    return server


def _one_of_bucket(seed: int) -> list[SequenceInput]:
    """One sequence of 20 tokens under version 0: every call of these shares a bucket, so a batch of
    them is one forward while it fits a tile."""
    return [SequenceInput(random_tokens(20, seed=seed), spans=((0, 1, 20),), sample_id=f"s{seed}")]


def test_a_call_answered_by_an_earlier_batch_is_not_held_while_its_own_drain_waits_for_the_next(
    one_version, batcher_clock
):
    """Each call submits a drain to the compute thread, but an earlier drain may take it: B's drain took
    B and C. C's own drain then runs with D queued and waits (clock stopped: for good) for the callers it
    expects. C's answer is ready and must reach C now, not after D's batch."""
    server = one_version
    batcher = server.running.batcher
    clock = batcher_clock
    gate = ForwardGate(server, holds=2)
    try:
        with ThreadPoolExecutor(6) as pool:
            a = pool.submit(_score, server.address, _one_of_bucket(1))
            assert gate.entries[0].wait(WAIT_S), "A never reached the model"
            b = pool.submit(_score, server.address, _one_of_bucket(2))
            c = pool.submit(_score, server.address, _one_of_bucket(3))
            _wait_for(lambda: batcher.queued == 2, "B and C to queue behind A's forward")
            clock.now += 1.0  # A's forward took a second: the batch after waits at most a tenth of that
            gate.releases[0].set()
            assert gate.entries[1].wait(WAIT_S), "B and C's forward never started"
            a.result(WAIT_S)
            d = pool.submit(_score, server.address, _one_of_bucket(4))
            _wait_for(lambda: batcher.queued == 1, "D to queue behind B and C's forward")
            clock.now += 1.0
            gate.releases[1].set()
            b.result(WAIT_S)
            c.result(30)  # held back, C would wait with D for callers that come only below
            assert not d.done() and batcher.queued == 1, "D did not wait for the callers it expects"
            more = [pool.submit(_score, server.address, _one_of_bucket(seed)) for seed in (5, 6)]
            for future in [d, *more]:
                assert future.result(WAIT_S).sequences[0].logprobs.shape == (20,)
    finally:
        gate.remove()


def test_a_batch_that_got_every_call_it_expected_still_expects_the_callers_answered_meanwhile(
    one_version, batcher_clock
):
    """The period's peak is what the next batch waits for once a batch got every call it expected, even
    when fewer calls are in the server as it starts: callers answered meanwhile come back (a trainer's
    workers call in a loop). Only a batch that waited in vain takes the absent as gone. A is held in its
    forward while C, D and E arrive (a peak of four), E's deadline ends its call while queued, and the
    batch after A takes C and D at once, with two or three calls in the server. The next batch waits for
    four: with the batcher's clock stopped it holds F, G and H until a fourth call comes."""
    server = one_version
    batcher = server.running.batcher
    batcher.burst_gap_s = 0.0  # no burst waits: only the rule for several callers is at work
    batcher._expected = 0
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(4) as pool:
            a = pool.submit(_score, server.address, _one_of_bucket(1))
            assert gate.entered.wait(WAIT_S), "A never reached the model"
            c, d = (pool.submit(_score, server.address, _one_of_bucket(seed)) for seed in (2, 3))
            e = pool.submit(_score, server.address, _one_of_bucket(4), 1.0)  # its deadline passes while queued
            with pytest.raises(errors.DeadlineExceeded):
                e.result(WAIT_S)
            _wait_for(lambda: batcher.in_server == 3 and batcher.queued == 3, "E's call to end while it is queued")
            gate.release.set()
            for call in (a, c, d):
                assert call.result(WAIT_S).sequences[0].logprobs.shape == (20,)
    finally:
        gate.remove()
    assert batcher._expected == 4, "the batch of C and D took the callers answered or gone meanwhile as gone"
    batches, calls = batcher.batches, batcher.calls
    batcher._recent_s_per_call = deque([1.0])  # a bound on the wait that the stopped clock never reaches
    with ThreadPoolExecutor(4) as pool:
        held = [pool.submit(_score, server.address, _one_of_bucket(seed)) for seed in (5, 6, 7)]
        _wait_for(lambda: batcher.queued == 3 or batcher.batches > batches, "F, G and H to queue")
        assert batcher.batches == batches and not any(call.done() for call in held), "a batch started short of four"
        fourth = pool.submit(_score, server.address, _one_of_bucket(8))
        for call in [*held, fourth]:
            assert call.result(WAIT_S).sequences[0].logprobs.shape == (20,)
    assert batcher.batches == batches + 1 and batcher.calls == calls + 4


def test_a_lone_call_waits_for_a_burst_while_its_tile_has_room(one_version):
    """A call that comes alone may be the first of a burst. While its forward has a free row, the batch
    waits as long as calls keep arriving less than `burst_gap_s` apart (here a gap longer than any
    wait of the test): the first call stays queued until the second comes, and one engine call
    answers both."""
    server = one_version
    batcher = server.running.batcher
    _burst_bounds_out_of_the_way(batcher)
    batches, calls = batcher.batches, batcher.calls
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_score, server.address, _one_of_bucket(1))
        _wait_for(lambda: batcher.queued == 1, "the first call to queue")
        second = pool.submit(_score, server.address, _one_of_bucket(2))
        answers = [first.result(WAIT_S), second.result(WAIT_S)]
    assert (batcher.batches, batcher.calls) == (batches + 1, calls + 2)
    assert [a.sequences[0].sample_id for a in answers] == ["s1", "s2"]


def test_a_call_that_fills_its_tile_does_not_wait_for_a_burst(one_version):
    """Two sequences of a bucket fill the 2-row tile: no caller could share its forward, so it goes at
    once although the burst gap is longer than the client's deadline."""
    server = one_version
    batcher = server.running.batcher
    _burst_bounds_out_of_the_way(batcher)
    batches = batcher.batches
    request = _one_of_bucket(1) + _one_of_bucket(2)
    result = _score(server.address, request, timeout_s=30)
    assert [s.sample_id for s in result.sequences] == ["s1", "s2"]
    assert batcher.batches == batches + 1


def test_callers_that_did_not_come_within_the_window_are_not_waited_for_again(one_version, batcher_clock):
    """The batcher expected 3 callers (its last batches saw 3 active). The first call waits for them
    until the window runs out (the test moves the clock) and goes alone; the callers it waited for are
    then taken as gone, so the next call goes at once instead of waiting for them again."""
    server = one_version
    batcher = server.running.batcher
    clock = batcher_clock
    batcher.burst_gap_s = 0.0
    batcher.coalesce_window_s = WAIT_S
    batcher._expected, batcher._peak, batcher._recent_s_per_call = 3, 3, deque([1.0])
    batches = batcher.batches
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_score, server.address, _one_of_bucket(1))
            _wait_for(lambda: batcher.queued == 1, "the first call to queue")
            assert not first.done()
            clock.now += 1.0  # past the window of 0.1 s per expected call
            assert gate.entered.wait(WAIT_S), "the window ran out but the first call was not scored"
            clock.now += 1.0  # its forward took a second: a later wait for company would last 0.1 s a call
            gate.release.set()
            first.result(WAIT_S)
    finally:
        gate.remove()
    second = _score(server.address, _one_of_bucket(2), timeout_s=30)  # waiting for 3, it would never go
    assert second.sequences[0].sample_id == "s2"
    assert batcher.batches == batches + 2


def test_a_lone_calls_wait_for_a_burst_is_bounded_by_the_last_batchs_compute(one_version, batcher_clock):
    """The burst gap is at most 2% of the last batch's compute, as the batcher measured it: here its
    clock says that batch took one second, so a lone call waits 20 ms for company and goes, although
    the configured gap and window are longer than its client's deadline."""
    server = one_version
    batcher = server.running.batcher
    clock = batcher_clock
    batcher.burst_gap_s = batcher.coalesce_window_s = WAIT_S
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(_score, server.address, _one_of_bucket(1))
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            clock.now += 1.0
            gate.release.set()
            first.result(WAIT_S)
    finally:
        gate.remove()
    assert batcher._last_batch_s == 1.0
    second = _score(server.address, _one_of_bucket(2), timeout_s=30)
    assert second.sequences[0].sample_id == "s2"


def test_a_lone_call_waits_for_a_burst_within_a_window_under_a_second(one_version, batcher_clock):
    """A window of half a second (the clock stopped, so it never runs out): the lone call is held for
    whole gaps of half a second while it waits for company, long enough for the test to see it queued,
    where a call that does not wait is taken at once."""
    server = one_version
    batcher = server.running.batcher
    batcher.burst_gap_s, batcher.coalesce_window_s, batcher._last_batch_s = WAIT_S, 0.5, 1e6
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_score, server.address, _one_of_bucket(1))
        _wait_for(lambda: batcher.queued == 1, "the first call to be held queued")
        second = pool.submit(_score, server.address, _one_of_bucket(2))
        answers = [first.result(WAIT_S), second.result(WAIT_S)]
    assert [a.sequences[0].sample_id for a in answers] == ["s1", "s2"]


def test_a_drain_that_fails_outside_the_engine_answers_its_call_with_the_error(one_version, monkeypatch):
    """A bug in the batcher itself (here taking the batch raises) is the call's answer at once, as
    INTERNAL: the call does not wait for a batch that will never come."""
    server = one_version
    batcher = server.running.batcher

    def broken_take():
        raise RuntimeError("taking the batch broke")

    monkeypatch.setattr(batcher, "_take", broken_take)
    with pytest.raises(errors.LogitServiceError) as caught:
        _score(server.address, _one_of_bucket(1), timeout_s=30)
    assert caught.value.code == grpc.StatusCode.INTERNAL and "see the server log" in caught.value.message
    monkeypatch.undo()
    assert _score(server.address, _one_of_bucket(2)).sequences[0].sample_id == "s2"  # and it serves on


def test_a_call_whose_drain_never_runs_is_answered_unavailable_instead_of_waiting_out_its_deadline(one_version):
    """At shutdown the compute executor drops the drains still queued: each of their calls is answered
    UNAVAILABLE at once (clients retry elsewhere), not left to wait for a batch that will never come."""
    server = one_version
    batcher = server.running.batcher
    compute = server.running.executors[0]
    gate = ForwardGate(server)
    try:
        with ThreadPoolExecutor(2) as pool:
            held = pool.submit(_score, server.address, _one_of_bucket(1))
            assert gate.entered.wait(WAIT_S), "the first call never reached the model"
            queued = pool.submit(_score, server.address, _one_of_bucket(2), WAIT_S)
            _wait_for(lambda: batcher.queued == 1 and compute._work_queue.qsize() >= 1, "the second call's drain to queue")
            compute.shutdown(wait=False, cancel_futures=True)
            with pytest.raises(errors.LogitServiceError) as caught:
                queued.result(WAIT_S)
            gate.release.set()
            assert held.result(WAIT_S).sequences[0].sample_id == "s1"
    finally:
        gate.remove()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert caught.value.message == "the server is shutting down; this call was not scored (retry on another replica)"


def test_after_batches_that_all_failed_the_next_batch_is_still_taken_and_served(make_server, snapshot_dir, trained):
    """No batch has been timed yet when the first ones fail: the next batch, expecting the callers seen
    meanwhile, has no compute time to bound its wait by, and must still be taken and served."""
    server = make_server(snapshot_dir, ewma_enabled=False)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)  # no Score yet
    request = [SequenceInput(random_tokens(20, seed=12), spans=((0, 1, 20),), sample_id="f")]
    gate = ForwardGate(server, holds=2)
    forwards = []

    def fail_the_first_two(_module, _args):
        forwards.append(1)
        if len(forwards) <= 2:
            raise RuntimeError("the forward broke")

    failing = server.running.engine.backend.model.model.layers[0].register_forward_pre_hook(fail_the_first_two)
    batcher = server.running.batcher
    try:
        with ThreadPoolExecutor(4) as pool:
            failed = [pool.submit(_score, server.address, request)]
            assert gate.entries[0].wait(WAIT_S), "the first call never reached the model"
            failed += [pool.submit(_score, server.address, request, 30) for _ in range(2)]
            _wait_for(lambda: batcher.queued == 2, "two calls to queue behind the first forward")
            gate.releases[0].set()
            assert gate.entries[1].wait(WAIT_S), "the two calls' forward never started"
            # That batch expects the three callers seen so far, and nothing has been timed yet.
            served = pool.submit(_score, server.address, request, 30)
            _wait_for(lambda: batcher.queued == 1, "a call to queue behind the second forward")
            gate.releases[1].set()
            codes = []
            for future in failed:
                with pytest.raises(errors.LogitServiceError) as caught:
                    future.result(WAIT_S)
                codes.append(caught.value.code)
            answer = served.result(WAIT_S)
    finally:
        failing.remove()
        gate.remove()
    assert codes == [grpc.StatusCode.INTERNAL] * 3
    assert answer.sequences[0].logprobs.shape == (20,)
