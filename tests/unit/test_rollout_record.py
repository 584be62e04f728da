"""The rollout record and lease book of the vLLM adapter, without vLLM: alignment, segments, leases."""

from __future__ import annotations

import numpy as np
import pytest

from logit_client.rollout import Rollout, loss_inputs
from logit_client.vllm_rollout import LeaseBook


def _rollout(sample_id="a") -> Rollout:
    r = Rollout([5, 6, 7], sample_id=sample_id)
    r.append([10, 11], [-1.0, -2.0], policy_version=3)
    r.append([12], [-0.5], policy_version=4)
    return r


def test_arrays_align_with_the_full_sequence_and_feed_from_versions():
    r = _rollout()
    assert r.all_token_ids.tolist() == [5, 6, 7, 10, 11, 12]
    assert r.all_versions.tolist() == [-1, -1, -1, 3, 3, 4]
    assert np.isnan(r.all_behavior_logprobs[:3]).all()
    assert r.all_behavior_logprobs[3:].tolist() == [-1.0, -2.0, -0.5]
    seq = r.to_sequence_input()
    assert seq.spans == ((3, 3, 5), (4, 5, 6)) and seq.sample_id == "a"


def test_pending_segments_cover_only_tokens_not_yet_submitted():
    r = _rollout()
    seg = r.pending_segment()
    assert seg.spans == ((3, 3, 5), (4, 5, 6)) and len(seg.token_ids) == 6
    r.submitted_until = 5
    assert r.pending_segment().spans == ((4, 5, 6),)
    r.submitted_until = 6
    assert r.pending_segment() is None


def test_loss_inputs_pad_without_nan():
    batch = loss_inputs([_rollout(), Rollout([1, 2])], width=8)
    assert batch["behavior_logprobs"].shape == (2, 8)
    assert not np.isnan(batch["behavior_logprobs"]).any()
    assert batch["loss_mask"].sum() == 3 and batch["versions"][1].tolist() == [-1] * 8
    with pytest.raises(ValueError, match="shorter"):
        loss_inputs([_rollout()], width=4)


class Recorder:
    def __init__(self):
        self.calls = []

    def lease_versions(self, versions, *, holder, ttl_s):
        self.calls.append(("lease", tuple(versions)))

    def release_versions(self, versions, *, holder):
        self.calls.append(("release", tuple(versions)))


def test_a_version_is_released_only_when_its_last_rollout_is_handed_over():
    client = Recorder()
    book = LeaseBook(client, "h", 60.0)
    a, b = _rollout("a"), Rollout([1], sample_id="b")
    b.append([2], [-1.0], policy_version=3)
    book.hold([a, b])
    assert client.calls == [("lease", (3, 4))]
    book.hold([a])  # nothing new
    assert len(client.calls) == 1
    book.release([a])
    assert client.calls[-1] == ("release", (4,)) and book.leased_versions == (3,)
    book.release([b])
    assert client.calls[-1] == ("release", (3,)) and book.leased_versions == ()
