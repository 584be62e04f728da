"""Left-padded prompt / right-padded response rows to SequenceInputs and back, without a server."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client import ScoreResult, SequenceScores, SpanScore, TokenSource
from logit_client.integrations.prompt_response import (
    build_prompt_response_batch,
    response_version_grid,
    scatter_response_scores,
)

PROMPTS = np.array([[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]])
PROMPT_MASK = (PROMPTS != 0).astype(int)
RESPONSES = np.array([[20, 21, 22], [23, 0, 0], [24, 25, 0]])
RESPONSE_MASK = np.array([[1, 1, 1], [1, 0, 0], [1, 1, 0]])


def test_rows_become_unpadded_sequences_with_spans_on_the_response():
    versions = np.array([[3, 3, 4], [3, -1, -1], [5, 5, -1]])
    batch = build_prompt_response_batch(PROMPTS, PROMPT_MASK, RESPONSES, RESPONSE_MASK, versions)
    assert [s.token_ids.tolist() for s in batch.sequences] == [[5, 6, 20, 21, 22], [7, 8, 9, 10, 23], [11, 24, 25]]
    assert [s.spans for s in batch.sequences] == [((3, 2, 4), (4, 4, 5)), ((3, 4, 5),), ((5, 1, 3),)]
    assert batch.prompt_lengths == [2, 4, 1]


def test_score_mask_leaves_tool_output_in_the_context_unscored_and_skips_empty_rows():
    score_mask = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0]])
    batch = build_prompt_response_batch(PROMPTS, PROMPT_MASK, RESPONSES, RESPONSE_MASK, 2, score_mask=score_mask)
    assert batch.rows == [0, 2]  # row 1 has nothing to score
    assert batch.sequences[0].token_ids.tolist() == [5, 6, 20, 21, 22]  # token 21 stays as context
    assert batch.sequences[0].spans == ((2, 2, 3), (2, 4, 5))


def test_answers_land_under_their_response_positions():
    batch = build_prompt_response_batch(PROMPTS, PROMPT_MASK, RESPONSES, RESPONSE_MASK, 7)
    answers = []
    for seq, n_prompt in zip(batch.sequences, batch.prompt_lengths):
        n = len(seq.token_ids)
        logprobs = np.full(n, np.nan, dtype=np.float32)
        logprobs[n_prompt:] = -np.arange(1, n - n_prompt + 1, dtype=np.float32) - 10 * n_prompt
        sources = np.zeros(n, dtype=np.uint8)
        sources[n_prompt:] = TokenSource.EXACT
        served = np.full(n, -1, dtype=np.int64)
        served[n_prompt:] = 7
        answers.append(SequenceScores(seq.sample_id, logprobs, sources, served,
                                      [SpanScore(7, 7, "d", n_prompt, n, TokenSource.EXACT)]))  # fmt: skip
    out = scatter_response_scores(batch, ScoreResult(answers))
    assert out.logprobs.tolist() == [[-21, -22, -23], [-41, 0, 0], [-11, -12, 0]]
    assert out.scored.tolist() == RESPONSE_MASK.astype(bool).tolist()
    assert (out.served_versions[out.scored] == 7).all() and (out.served_versions[~out.scored] == -1).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"prompt_mask": np.fliplr(PROMPT_MASK)}, "left-padded", id="prompt padded on the right"),
        pytest.param({"response_mask": np.fliplr(RESPONSE_MASK)}, "right-padded", id="response padded on the left"),
        pytest.param({"versions": np.full((3, 3), -1)}, "negative version", id="a scored token without a version"),
        pytest.param({"versions": np.zeros((2, 3), dtype=int)}, "must be an int", id="versions of the wrong shape"),
        pytest.param({"prompt_mask": np.zeros_like(PROMPT_MASK)}, "empty prompt", id="no context for token 0"),
    ],
)
def test_layout_errors_say_what_is_wrong(change, message):
    args = {"prompt_mask": PROMPT_MASK, "response_mask": RESPONSE_MASK, "versions": 1} | change
    with pytest.raises(ValueError, match=message):
        build_prompt_response_batch(PROMPTS, args["prompt_mask"], RESPONSES, args["response_mask"], args["versions"])


def test_version_grid_accepts_one_per_batch_row_or_token():
    assert response_version_grid(4, 2, 3).tolist() == [[4, 4, 4], [4, 4, 4]]
    assert response_version_grid(np.array([1, 2]), 2, 3).tolist() == [[1, 1, 1], [2, 2, 2]]
    with pytest.raises(ValueError, match="integers"):
        response_version_grid(np.array([1.5, 2.0]), 2, 3)
