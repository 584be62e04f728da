"""The approximate route: the EWMA pseudo-version, fallback with per-token sources, spot checks, restarts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from logit_client import LogitClient, SequenceInput, TokenSource
from logit_client.ewma import ewma_beta_from_age
from logit_service import errors
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs
from logit_service.server.engine import ScoreOptions
from logit_service.types import ScoreSequence, Span
from tests.helpers import NUM_VERSIONS, VOCAB, random_tokens

AGE = 2.0
BETA = ewma_beta_from_age(AGE)


def closed_form_average(states, versions) -> dict[str, torch.Tensor]:
    """θ̄_n = Σ_i β^{n−i} θ_i / Σ_i β^{n−i}, written out directly (Hilton, Cobbe & Schulman 2021)."""
    n = len(versions)
    weights = [BETA ** (n - 1 - i) for i in range(n)]
    z = sum(weights)
    return {k: sum(w * states[v][k].double() for w, v in zip(weights, versions)).float() / z for k in states[0]}


def ewma_reference(states, versions, tokens) -> np.ndarray:
    model = build_tiny_model(vocab_size=VOCAB)
    model.load_state_dict(closed_form_average(states, versions))
    return reference_logprobs(model, tokens).numpy()


def _publish_all(client, trained, snapshot_dir, versions) -> None:
    for version in versions:
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)


def _wait_for_ewma(client, newest: int, timeout_s: float = 30.0):
    """EWMA folds run after publication, off the request path; poll until the newest is folded in."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ewma = client.list_versions().ewma
        if ewma is not None and ewma.covers_versions and max(ewma.covers_versions) == newest:
            return ewma
        time.sleep(0.02)
    raise TimeoutError(f"EWMA did not fold version {newest} within {timeout_s} s")


@pytest.fixture
def server(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, ewma_target_age=AGE)
    with LogitClient(server.address, timeout_s=60) as client:
        _publish_all(client, trained, snapshot_dir, range(NUM_VERSIONS))
        _wait_for_ewma(client, NUM_VERSIONS - 1)
    return server


def test_evicted_version_is_answered_from_the_ewma_and_flagged(server, trained):
    tokens = random_tokens(40, seed=1)
    with LogitClient(server.address) as client:
        with pytest.raises(errors.VersionOutsideWindow):
            client.score([SequenceInput(tokens, spans=((1, 1, 40),))])
        result = client.score([SequenceInput(tokens, spans=((1, 1, 20), (4, 20, 40)))], allow_ewma_fallback=True)
        ewma = client.list_versions().ewma
    seq = result.sequences[0]
    assert (seq.sources[1:20] == TokenSource.EWMA).all() and (seq.sources[20:] == TokenSource.EXACT).all()
    expected_ewma = ewma_reference(trained.states, list(range(NUM_VERSIONS)), tokens)
    np.testing.assert_allclose(seq.logprobs[1:20], expected_ewma[1:20], atol=1e-5, rtol=0)
    np.testing.assert_allclose(seq.logprobs[20:], trained.reference(4, tokens)[20:], atol=1e-5, rtol=0)
    assert seq.spans[0].snapshot_digest == ewma.digest and seq.spans[0].served_version == NUM_VERSIONS - 1
    assert seq.spans[0].requested_version == 1
    # the EWMA answer is an approximation: it differs from the version's own answer
    assert np.abs(seq.logprobs[1:20] - trained.reference(1, tokens)[1:20]).max() > 1e-4


def test_an_average_replaced_between_its_lookup_and_its_load_is_read_again(server, trained, monkeypatch):
    """A fold may replace the average after the engine looked it up: the load of the old snapshot then
    fails, and the engine takes the new record instead of failing the call. Put in by making the
    engine's first EWMA forward fail as that load does."""
    from logit_service.errors import SnapshotCorrupt
    from logit_service.server.engine import EWMA_KEY

    engine = server.running.engine
    run = engine._run
    failed = []

    def replaced_once(record, sequences, jobs, options, *, key):
        if key == EWMA_KEY and not failed:
            failed.append(record.policy_version)
            raise SnapshotCorrupt("ewma-v00000004: its manifest changed since it was published")
        return run(record, sequences, jobs, options, key=key)

    monkeypatch.setattr(engine, "_run", replaced_once)
    tokens = random_tokens(40, seed=1)
    with LogitClient(server.address) as client:
        result = client.score([SequenceInput(tokens, spans=((1, 1, 40),))], allow_ewma_fallback=True)
    assert failed == [NUM_VERSIONS - 1]
    seq = result.sequences[0]
    assert (seq.sources[1:] == TokenSource.EWMA).all()
    expected = ewma_reference(trained.states, list(range(NUM_VERSIONS)), tokens)
    np.testing.assert_allclose(seq.logprobs[1:], expected[1:], atol=1e-5, rtol=0)


def test_ewma_manifest_says_which_versions_it_covers(server):
    with LogitClient(server.address) as client:
        ewma = client.list_versions().ewma
    assert ewma.covers_versions == tuple(range(NUM_VERSIONS))
    assert ewma.policy_version == NUM_VERSIONS - 1


def test_never_published_version_falls_back_too(server):
    with LogitClient(server.address) as client:
        result = client.score([SequenceInput(random_tokens(10, 2), spans=((99, 1, 10),))], allow_ewma_fallback=True)
    assert (result.sequences[0].sources[1:] == TokenSource.EWMA).all()


def test_spot_check_reports_the_approximation_error(server, trained):
    tokens = random_tokens(50, seed=3)
    with LogitClient(server.address) as client:
        result = client.score([SequenceInput(tokens, spans=((3, 1, 50),))], force_ewma=True, spot_check_fraction=1.0)
    seq = result.sequences[0]
    assert (seq.sources[1:] == TokenSource.EWMA).all()
    errors_ = np.abs(seq.logprobs[1:].astype(np.float64) - trained.reference(3, tokens)[1:])
    assert result.spot_check.tokens_checked == 49
    assert result.spot_check.max_abs_error == pytest.approx(errors_.max(), abs=1e-5)
    assert result.spot_check.mean_abs_error == pytest.approx(errors_.mean(), abs=1e-5)
    assert result.spot_check.max_abs_error > 0


def test_spot_checks_answer_whatever_the_request_id(server):
    # The request id seeds which tokens are checked: any id, whatever its hash, must give a sample.
    tokens = random_tokens(20, seed=5)
    with LogitClient(server.address, timeout_s=60, max_retries=0) as client:
        for i in range(16):
            result = client.score(
                [SequenceInput(tokens, spans=((3, 1, 20),))], force_ewma=True, spot_check_fraction=0.5,
                request_id=f"rollout-{i}",
            )  # fmt: skip
            assert 0 <= result.spot_check.tokens_checked <= 19


def test_spot_check_skips_versions_with_nothing_exact_left(server):
    with LogitClient(server.address) as client:
        result = client.score(
            [SequenceInput(random_tokens(30, 4), spans=((0, 1, 30),))], allow_ewma_fallback=True, spot_check_fraction=1.0
        )
    assert result.spot_check.tokens_checked == 0


def test_a_passed_deadline_sends_tokens_to_the_ewma(server, trained):
    engine = server.running.engine
    tokens = random_tokens(30, seed=5)
    sequence = ScoreSequence("late", tokens, (Span(4, 1, 30),))
    outcome = engine.score([sequence], ScoreOptions(allow_ewma_fallback=True, deadline=time.monotonic() - 1.0))
    assert outcome.answers[0].spans[0].source == TokenSource.EWMA
    with pytest.raises(errors.DeadlineExceeded):
        engine.score([sequence], ScoreOptions(deadline=time.monotonic() - 1.0))


def test_without_an_ewma_fallback_tokens_are_unavailable(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=1, ewma_enabled=False)
    with LogitClient(server.address) as client:
        _publish_all(client, trained, snapshot_dir, range(3))
        result = client.score([SequenceInput(random_tokens(12, 6), spans=((0, 1, 12),))], allow_ewma_fallback=True)
    seq = result.sequences[0]
    assert (seq.sources[1:] == TokenSource.UNAVAILABLE).all() and np.isnan(seq.logprobs[1:]).all()


def test_restart_resumes_the_same_ewma_and_keeps_folding(make_server, snapshot_dir, trained, server):
    tokens = random_tokens(25, seed=7)
    with LogitClient(server.address) as client:
        before = client.list_versions().ewma
        answer_before = client.score([SequenceInput(tokens, spans=((4, 1, 25),))], force_ewma=True).sequences[0].logprobs
    server.stop()
    restarted = make_server(snapshot_dir, retention_window=2, ewma_target_age=AGE)
    with LogitClient(restarted.address) as client:
        after = client.list_versions().ewma
        assert after.digest == before.digest
        answer_after = client.score([SequenceInput(tokens, spans=((4, 1, 25),))], force_ewma=True).sequences[0].logprobs
        assert np.array_equal(answer_before, answer_after, equal_nan=True)
        # fold one more version: the resumed average continues the same closed form
        extra = {k: v + 0.01 for k, v in trained.states[-1].items()}
        client.publish(NUM_VERSIONS, extra, snapshot_dir, model_config=trained.config)
        _wait_for_ewma(client, NUM_VERSIONS)
        folded = client.score([SequenceInput(tokens, spans=((NUM_VERSIONS, 1, 25),))], force_ewma=True).sequences[0].logprobs
    states = list(trained.states) + [extra]
    np.testing.assert_allclose(folded[1:], ewma_reference(states, list(range(NUM_VERSIONS + 1)), tokens)[1:], atol=1e-5)


def test_versions_written_while_no_server_ran_are_folded_at_start(make_server, snapshot_dir, trained):
    for version in range(3):
        trained.write(snapshot_dir, version)
    server = make_server(snapshot_dir, retention_window=5, ewma_target_age=AGE)
    tokens = random_tokens(20, seed=8)
    with LogitClient(server.address) as client:
        ewma = _wait_for_ewma(client, 2)
        assert ewma.covers_versions == (0, 1, 2)
        trained.write(snapshot_dir, 3)  # found by a lookup, not an RPC: it must be folded all the same
        client.score([SequenceInput(tokens, spans=((3, 1, 20),))])
        _wait_for_ewma(client, 3)
        folded = client.score([SequenceInput(tokens, spans=((3, 1, 20),))], force_ewma=True).sequences[0].logprobs
    np.testing.assert_allclose(folded[1:], ewma_reference(trained.states, [0, 1, 2, 3], tokens)[1:], atol=1e-5)
