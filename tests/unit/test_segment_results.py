"""The rules for reusing a kept answer, on the real SegmentResults: exactly the tokens up to the span's
end, the same sample, version and temperature, segments that tile the span, and one set of weights."""

from __future__ import annotations

import numpy as np

from logit_service.server.segment_results import SegmentResults
from logit_service.types import ScoreSequence, Span

TOKENS = np.arange(40, dtype=np.int64) * 7 % 256
DIGEST = "a" * 64


def _sequence(tokens=TOKENS, end: int = 20, sample_id: str = "s") -> ScoreSequence:
    return ScoreSequence(sample_id=sample_id, token_ids=tokens[:end], spans=())


def _keep(kept: SegmentResults, start: int, end: int, *, digest: str = DIGEST, version: int = 0) -> np.ndarray:
    values = np.linspace(-1.0, -2.0, end - start, dtype=np.float32) - start
    kept.put(_sequence(end=end), Span(version, start, end), 1.0, values, version, digest)
    return values


def test_a_kept_answer_is_found_for_the_same_tokens_sample_version_and_temperature():
    kept = SegmentResults(max_tokens=100)
    values = _keep(kept, 8, 20)
    hit = kept.lookup(_sequence(), Span(0, 8, 20), 1.0)
    assert hit is not None and np.array_equal(hit[0], values) and hit[1:] == (0, DIGEST)
    longer = _sequence(end=30)  # tokens after the span's end do not change its log-probs
    assert kept.lookup(longer, Span(0, 8, 20), 1.0) is not None
    assert kept.lookup(_sequence(sample_id="other"), Span(0, 8, 20), 1.0) is None
    assert kept.lookup(_sequence(), Span(1, 8, 20), 1.0) is None
    assert kept.lookup(_sequence(), Span(0, 8, 20), 0.5) is None


def test_any_changed_token_up_to_the_span_end_refuses_the_kept_answer():
    kept = SegmentResults(max_tokens=100)
    _keep(kept, 8, 20)
    for position in (0, 7, 8, 19):  # prompt start, last prompt token, first and last scored token
        changed = TOKENS.copy()
        changed[position] += 1
        assert kept.lookup(_sequence(changed), Span(0, 8, 20), 1.0) is None, position


def test_segments_must_tile_the_span_exactly():
    kept = SegmentResults(max_tokens=100)
    first, second = _keep(kept, 8, 14), _keep(kept, 14, 20)
    hit = kept.lookup(_sequence(), Span(0, 8, 20), 1.0)
    assert hit is not None and np.array_equal(hit[0], np.concatenate([first, second]))
    assert kept.lookup(_sequence(), Span(0, 8, 12), 1.0) is None  # a kept segment ends past the span
    assert kept.lookup(_sequence(end=24), Span(0, 8, 24), 1.0) is None  # nothing kept for [20, 24)
    assert kept.lookup(_sequence(), Span(0, 10, 20), 1.0) is None  # no segment starts at 10


def test_segments_kept_under_different_weights_are_not_joined_into_one_answer():
    kept = SegmentResults(max_tokens=100)
    _keep(kept, 8, 14, digest="a" * 64)
    _keep(kept, 14, 20, digest="b" * 64)
    assert kept.lookup(_sequence(), Span(0, 8, 20), 1.0) is None
    assert kept.lookup(_sequence(), Span(0, 14, 20), 1.0)[2] == "b" * 64  # each alone still answers
