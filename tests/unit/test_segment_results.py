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


# The budgets: an answer larger than a budget is never kept, the least recently used go first, and the
# byte count follows every keep, replacement and drop.


def _entry_cost(sample_id: str, tokens: int) -> int:
    # What the budget charges one kept answer: the fixed overhead, the sample id's bytes, 4 bytes per log-prob.
    return 768 + len(sample_id.encode()) + 4 * tokens


def test_an_answer_of_exactly_the_token_budget_is_kept_and_a_larger_one_is_not():
    kept = SegmentResults(max_tokens=6)
    _keep(kept, 8, 14)
    assert len(kept) == 1 and kept.lookup(_sequence(), Span(0, 8, 14), 1.0) is not None
    too_long = SegmentResults(max_tokens=5)
    _keep(too_long, 8, 14)
    assert len(too_long) == 0 and too_long.used_bytes == 0


def test_an_answer_of_exactly_the_byte_budget_is_kept_and_a_larger_one_is_not():
    exact = SegmentResults(max_tokens=100, max_bytes=_entry_cost("s", 6))
    _keep(exact, 8, 14)
    assert len(exact) == 1 and exact.used_bytes == _entry_cost("s", 6)
    short = SegmentResults(max_tokens=100, max_bytes=_entry_cost("s", 6) - 1)
    _keep(short, 8, 14)
    assert len(short) == 0 and short.used_bytes == 0


def test_the_byte_count_follows_keeps_and_replacements():
    kept = SegmentResults(max_tokens=100)
    assert kept.used_bytes == 0
    _keep(kept, 8, 14)
    _keep(kept, 14, 20)
    assert len(kept) == 2 and kept.used_bytes == 2 * _entry_cost("s", 6)
    _keep(kept, 8, 14)  # the same key again: replaced, not counted twice
    assert len(kept) == 2 and kept.used_bytes == 2 * _entry_cost("s", 6)
    kept.put(_sequence(end=12), Span(0, 8, 12), 1.0, np.zeros(4, np.float32), 0, DIGEST)  # same start, shorter
    assert len(kept) == 2 and kept.used_bytes == _entry_cost("s", 6) + _entry_cost("s", 4)


def test_the_least_recently_used_answer_is_dropped_for_the_token_budget():
    kept = SegmentResults(max_tokens=12)
    _keep(kept, 2, 8)
    _keep(kept, 8, 14)
    assert kept.lookup(_sequence(), Span(0, 2, 8), 1.0) is not None  # now the most recently used
    _keep(kept, 14, 20)
    assert len(kept) == 2
    assert kept.lookup(_sequence(), Span(0, 8, 14), 1.0) is None
    assert kept.lookup(_sequence(), Span(0, 2, 8), 1.0) is not None
    assert kept.lookup(_sequence(), Span(0, 14, 20), 1.0) is not None
    assert kept.used_bytes == 2 * _entry_cost("s", 6)


def test_a_tiled_lookup_keeps_every_part_it_used():
    kept = SegmentResults(max_tokens=18)
    _keep(kept, 2, 8)
    _keep(kept, 8, 14)
    _keep(kept, 14, 20)
    assert kept.lookup(_sequence(), Span(0, 2, 14), 1.0) is not None  # [14, 20) is now the oldest
    _keep(kept, 20, 26)
    assert kept.lookup(_sequence(), Span(0, 14, 20), 1.0) is None
    assert kept.lookup(_sequence(), Span(0, 2, 14), 1.0) is not None


def test_the_byte_budget_drops_the_oldest_too():
    kept = SegmentResults(max_tokens=100, max_bytes=2 * _entry_cost("s", 6))
    _keep(kept, 2, 8)
    _keep(kept, 8, 14)
    _keep(kept, 14, 20)
    assert len(kept) == 2 and kept.used_bytes == 2 * _entry_cost("s", 6)
    assert kept.lookup(_sequence(), Span(0, 2, 8), 1.0) is None


def test_the_sample_id_is_charged_in_utf8_bytes():
    kept = SegmentResults(max_tokens=100)
    kept.put(_sequence(sample_id="é" * 10), Span(0, 8, 14), 1.0, np.zeros(6, np.float32), 0, DIGEST)
    assert kept.used_bytes == _entry_cost("é" * 10, 6) == 768 + 20 + 24


def test_an_integer_temperature_finds_the_answer_kept_at_the_same_float():
    kept = SegmentResults(max_tokens=100)
    kept.put(_sequence(), Span(0, 8, 20), 1, np.zeros(12, np.float32), 0, DIGEST)
    assert kept.lookup(_sequence(), Span(0, 8, 20), 1.0) is not None


def test_the_kept_answer_gives_its_served_version_and_float32_log_probs():
    kept = SegmentResults(max_tokens=100)
    kept.put(_sequence(), Span(3, 8, 20), 1.0, np.linspace(-1, -2, 12), 5, "c" * 64)  # float64 in
    logprobs, served, digest = kept.lookup(_sequence(), Span(3, 8, 20), 1.0)
    assert logprobs.dtype == np.float32 and (served, digest) == (5, "c" * 64)


def test_an_answer_over_one_budget_leaves_the_kept_ones_alone():
    over_tokens = SegmentResults(max_tokens=8)
    _keep(over_tokens, 2, 8)
    _keep(over_tokens, 8, 17)  # 9 tokens: over the token budget, well within the byte budget
    assert len(over_tokens) == 1 and over_tokens.lookup(_sequence(), Span(0, 2, 8), 1.0) is not None
    over_bytes = SegmentResults(max_tokens=100, max_bytes=2 * _entry_cost("s", 6))
    _keep(over_bytes, 2, 8)
    long_id = _sequence(sample_id="x" * 1000)  # one token, but its sample id is over the byte budget
    over_bytes.put(long_id, Span(0, 8, 9), 1.0, np.zeros(1, np.float32), 0, DIGEST)
    assert len(over_bytes) == 1 and over_bytes.lookup(_sequence(), Span(0, 2, 8), 1.0) is not None


def test_the_digest_covers_token_values_not_the_arrays_dtype():
    kept = SegmentResults(max_tokens=100)
    _keep(kept, 8, 20)
    as_int32 = ScoreSequence(sample_id="s", token_ids=TOKENS[:20].astype(np.int32), spans=())
    assert kept.lookup(as_int32, Span(0, 8, 20), 1.0) is not None


def test_an_answer_kept_from_a_longer_sequence_is_found_again():
    # The digest is of the tokens up to the span's end, not of everything the submitted sequence held.
    kept = SegmentResults(max_tokens=100)
    kept.put(_sequence(end=30), Span(0, 8, 14), 1.0, np.zeros(6, np.float32), 0, DIGEST)
    assert kept.lookup(_sequence(end=30), Span(0, 8, 14), 1.0) is not None


def test_replacing_an_answer_counts_only_the_new_one():
    kept = SegmentResults(max_tokens=12)
    _keep(kept, 2, 8)  # 6 tokens
    _keep(kept, 8, 11)  # 3 tokens
    _keep(kept, 2, 8)  # replaced: still 9 tokens in all
    assert kept.used_bytes == _entry_cost("s", 6) + _entry_cost("s", 3)
    _keep(kept, 11, 14)  # 12 tokens: exactly the budget, nothing dropped
    assert len(kept) == 3
    assert kept.lookup(_sequence(), Span(0, 8, 11), 1.0) is not None


def test_the_token_count_stays_right_after_a_drop():
    kept = SegmentResults(max_tokens=12)
    _keep(kept, 2, 8)
    _keep(kept, 8, 14)
    _keep(kept, 14, 20)  # drops [2, 8)
    _keep(kept, 20, 26)  # drops [8, 14): two answers of 6 tokens fit, never three
    assert len(kept) == 2
    assert kept.lookup(_sequence(end=26), Span(0, 14, 26), 1.0) is not None
