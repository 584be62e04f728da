"""Leases keep versions a partial rollout still needs servable past the retention window."""

from __future__ import annotations

import time

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import random_tokens

TOKENS = random_tokens(30, seed=21)


def _score(client, version):
    return client.score([SequenceInput(TOKENS, spans=((version, 1, 30),))]).sequences[0].logprobs


@pytest.fixture
def setup(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir, retention_window=2, max_leased_versions=2, scan_interval_s=0.05)
    client = LogitClient(server.address, timeout_s=60)
    for version in range(2):
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
    yield server, client
    client.close()


def _publish(client, trained, snapshot_dir, versions):
    for version in versions:
        client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)


def test_a_leased_version_stays_exact_past_the_window_until_released(setup, snapshot_dir, trained):
    _, client = setup
    assert client.lease_versions([0], holder="rollout-7", ttl_s=60) == (0,)
    _publish(client, trained, snapshot_dir, [2, 3])  # the window is now [2, 3]
    np.testing.assert_allclose(_score(client, 0)[1:], trained.reference(0, TOKENS)[1:], atol=1e-5)
    listed = {v.policy_version: v for v in client.list_versions().versions}
    assert listed[0].leased and listed[0].state == "retained" and not listed[3].leased
    assert (snapshot_dir / "v00000000").is_dir()
    client.release_versions([0], holder="rollout-7")
    with pytest.raises(errors.VersionOutsideWindow):
        _score(client, 0)
    assert not (snapshot_dir / "v00000000").exists()
    assert client.get_version(0).state == "evicted"


def test_the_last_holder_keeps_the_version(setup, snapshot_dir, trained):
    _, client = setup
    client.lease_versions([1], holder="a", ttl_s=60)
    client.lease_versions([1], holder="b", ttl_s=60)
    _publish(client, trained, snapshot_dir, [2, 3])
    client.release_versions([1], holder="a")
    _score(client, 1)  # b still holds it
    client.release_versions([1], holder="b")
    with pytest.raises(errors.VersionOutsideWindow):
        _score(client, 1)


def test_a_lapsed_lease_lets_retention_evict(setup, snapshot_dir, trained):
    _, client = setup
    client.lease_versions([0], holder="short", ttl_s=0.3)
    _publish(client, trained, snapshot_dir, [2, 3])
    # No score of 0 here: on a loaded machine the two publishes can outlast 0.3 s, and scoring under a
    # live lease is the test above. What matters is that the lapsed lease stops protecting the version.
    deadline = time.monotonic() + 10
    while (snapshot_dir / "v00000000").exists():  # the server's periodic retention pass evicts it
        assert time.monotonic() < deadline, "a lapsed lease still kept version 0 after 10 s"
        time.sleep(0.05)
    with pytest.raises(errors.VersionOutsideWindow):
        _score(client, 0)


def test_leasing_what_cannot_be_served_fails_and_takes_no_lease(setup, snapshot_dir, trained):
    _, client = setup
    _publish(client, trained, snapshot_dir, [2, 3])
    with pytest.raises(errors.VersionOutsideWindow):
        client.lease_versions([0], holder="late", ttl_s=60)
    with pytest.raises(errors.VersionNotFound):
        client.lease_versions([3, 9], holder="late", ttl_s=60)  # all or nothing: 3 is not leased either
    assert not any(v.leased for v in client.list_versions().versions)
    with pytest.raises(errors.InvalidRequest):
        client.lease_versions([3], holder="late", ttl_s=1e9)


def test_leases_are_bounded_so_what_outlives_the_window_is_bounded(setup, snapshot_dir, trained):
    _, client = setup  # max_leased_versions=2, K=2
    _publish(client, trained, snapshot_dir, [2])
    client.lease_versions([1, 2], holder="r", ttl_s=60)
    _publish(client, trained, snapshot_dir, [3])  # the window is [2, 3]; the lease keeps 1 as well
    client.lease_versions([2], holder="s", ttl_s=60)  # another holder on a leased version adds nothing
    with pytest.raises(errors.LeaseLimit, match="limit is 2"):
        client.lease_versions([3], holder="t", ttl_s=60)
    assert not client.get_version(3).leased
    client.release_versions([1], holder="r")
    assert client.lease_versions([3], holder="t", ttl_s=60) == (3,)
