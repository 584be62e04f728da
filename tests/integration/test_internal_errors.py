"""An unexpected failure inside the server answers INTERNAL with a fixed message: the exception's text
and trace stay in the server log, never reach the client, and the server keeps serving."""

from __future__ import annotations

import logging

import grpc
import pytest

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from tests.helpers import random_tokens

SECRET = "secret-internal-detail-/etc/logit"


def test_an_internal_error_reaches_the_client_without_its_trace(make_server, snapshot_dir, trained, caplog):
    server = make_server(snapshot_dir)
    sequence = SequenceInput(random_tokens(12, seed=2), spans=((0, 1, 12),))
    with LogitClient(server.address, max_retries=0, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        before = client.score([sequence]).sequences[0].logprobs

        def fail(_module, _args):
            raise RuntimeError(SECRET)

        handle = server.running.engine.backend.model.model.layers[0].register_forward_pre_hook(fail)
        try:
            with caplog.at_level(logging.ERROR, logger="logit_service.server.interceptors"):
                with pytest.raises(errors.LogitServiceError) as info:
                    client.score([sequence])
        finally:
            handle.remove()
        assert info.value.code == grpc.StatusCode.INTERNAL
        for leaked in (SECRET, "RuntimeError", "Traceback", ".py"):
            assert leaked not in info.value.message, info.value.message
        assert "see the server log" in info.value.message
        assert SECRET in caplog.text  # the trace is kept where an operator can read it
        after = client.score([sequence]).sequences[0].logprobs
    assert (before[1:] == after[1:]).all()
