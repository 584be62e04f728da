"""The CLI server as a real process: serving versions written into its directory, and restarts that
rebuild the view from the snapshot directory and the registry with bit-identical answers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service.config import ServerConfig
from tests.helpers import random_tokens
from tests.server_process import ServerProcess

SEQUENCES = [
    SequenceInput(random_tokens(60, seed=1), spans=((1, 5, 30), (2, 30, 45), (3, 45, 60)), sample_id="a"),
    SequenceInput(random_tokens(25, seed=2), spans=((3, 1, 25),), sample_id="b"),
]


def _answers(address: str) -> list[np.ndarray]:
    with LogitClient(address, timeout_s=60) as client:
        return [s.logprobs for s in client.score(SEQUENCES).sequences]


def test_serve_starts_empty_and_serves_versions_written_into_the_directory_afterwards(snapshot_dir, trained):
    with ServerProcess(snapshot_dir) as server, LogitClient(server.address, timeout_s=60) as client:
        assert client.list_versions().latest_version is None
        for version in range(4):
            trained.write(snapshot_dir, version)  # no publish RPC: the server finds them on its own
        result = client.score(SEQUENCES[1:])
        np.testing.assert_allclose(result.sequences[0].logprobs[1:], trained.reference(3, SEQUENCES[1].token_ids)[1:], atol=1e-5)
        assert client.list_versions().latest_version == 3


@pytest.mark.parametrize("use_redis", [pytest.param(False, id="in-process registry"), pytest.param(True, id="redis registry")])
def test_restarted_process_gives_bit_identical_answers(snapshot_dir, trained, redis_url, use_redis):
    extra = ("--redis-url", redis_url, "--redis-namespace", f"restart-{use_redis}") if use_redis else ()
    with ServerProcess(snapshot_dir, *extra) as first:
        with LogitClient(first.address) as client:
            for version in range(4):
                client.publish(version, trained.states[version], snapshot_dir, model_config=trained.config)
        before = _answers(first.address)
        listed_before = LogitClient(first.address).list_versions()
    with ServerProcess(snapshot_dir, *extra) as second:
        after = _answers(second.address)
        listed_after = LogitClient(second.address).list_versions()
    for a, b in zip(before, after):
        assert np.array_equal(a, b, equal_nan=True)
    assert [v.digest for v in listed_before.versions] == [v.digest for v in listed_after.versions]
    assert listed_after.latest_version == 3


def test_every_option_is_in_help_with_its_environment_variable():
    out = subprocess.run(
        [sys.executable, "-m", "logit_service.cli", "serve", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in ServerConfig.model_fields:
        assert "--" + name.replace("_", "-") in out
        assert "LOGIT_SERVICE_" + name.upper() in out


def test_sigterm_stops_the_server_cleanly(snapshot_dir):
    server = ServerProcess(snapshot_dir).start()
    assert server.stop() == 0
