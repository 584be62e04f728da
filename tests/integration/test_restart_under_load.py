"""A replica restarted under client load: no call fails within its deadline and no answer is wrong."""

from __future__ import annotations

from tests.redis_server import free_port
from tests.scoring_load import ScoringLoad
from tests.server_process import ServerProcess


def test_default_client_rides_out_a_restart(snapshot_dir, trained):
    for version in range(2):
        trained.write(snapshot_dir, version)
    port = free_port()
    # Default retries; a deadline longer than a restart takes even on a loaded machine.
    load = ScoringLoad(trained, lambda worker: [f"127.0.0.1:{port}"], timeout_s=180)
    server = ServerProcess(snapshot_dir, port=port).start(timeout_s=180)
    try:
        load.start()
        load.wait_for_answers(10, timeout_s=180)
        before = len(load.answered)
        server.stop()  # SIGTERM: in-flight calls finish, then the port closes
        server = ServerProcess(snapshot_dir, port=port).start(timeout_s=180)
        load.wait_for_answers(before + 10, timeout_s=180)
    finally:
        load.stop(join_s=200)
        server.stop()
    assert not load.failures, f"calls failed within their deadline across the restart: {load.failures[:3]}"
    assert not load.wrong
    assert before >= 10 and len(load.answered) >= before + 10, "the load did not continue after the restart"
