"""What the inner interceptors hand the access log about a call: the decoded request, and the policy
versions it names, counted the same way for every kind of request."""

from __future__ import annotations

import contextvars

from logit_service.server.call_context import note_request, note_versions, open_call, request_versions
from logit_service.v1 import logit_service_pb2 as pb


def _sequence(*versions: int) -> pb.Sequence:
    spans = [pb.VersionSpan(policy_version=v, start=1 + i, end=2 + i) for i, v in enumerate(versions)]
    return pb.Sequence(sample_id="s", token_ids=bytes(4 * (len(versions) + 1)), spans=spans)


def test_a_score_names_the_versions_of_every_span_of_every_sequence():
    request = pb.ScoreRequest(sequences=[_sequence(3, 1), _sequence(2, 3)])
    assert request_versions(request) == [1, 2, 3]


def test_submitted_segments_name_the_versions_of_their_spans():
    assert request_versions(pb.SubmitSegmentsRequest(segments=[_sequence(9), _sequence(4, 9)])) == [4, 9]


def test_a_lease_names_each_version_it_asks_for_once_ascending():
    assert request_versions(pb.LeaseVersionsRequest(holder="h", policy_versions=[5, 2, 5])) == [2, 5]


def test_a_call_about_one_version_names_it_and_one_about_none_names_none():
    assert request_versions(pb.GetVersionRequest(policy_version=7)) == [7]
    assert request_versions(pb.BarrierRequest(policy_version=0)) == [0]  # version 0 is a version
    assert request_versions(pb.FetchVersionRequest(policy_version=11)) == [11]
    assert request_versions(pb.ListVersionsRequest()) == []


def test_notes_reach_the_call_opened_in_the_same_task_and_nothing_else():
    def inside_a_call():
        holder = open_call()
        request = pb.GetVersionRequest(policy_version=3)
        note_request(request)
        note_versions([3])
        return holder, request

    holder, request = contextvars.copy_context().run(inside_a_call)
    assert holder == {"request": request, "versions": [3]}

    def outside_any_call():  # no call opened in this context: the notes go nowhere, and raise nothing
        note_request(pb.GetVersionRequest(policy_version=1))
        note_versions([1])
        return open_call()

    assert contextvars.copy_context().run(outside_any_call) == {}
