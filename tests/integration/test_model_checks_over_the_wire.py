"""Regressions over real gRPC: the model is built and proved at the first publish, refusals are clear
and register nothing, temperature is bounded, nothing non-finite is served, and the bf16 cast rule."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
import torch

from logit_client import LogitClient, SequenceInput
from logit_service import errors
from logit_service.snapshots.writer import write_snapshot
from logit_service.v1 import logit_service_pb2 as pb
from logit_service.v1 import logit_service_pb2_grpc as pb_grpc
from tests.tiny_architectures import VOCAB, build_trained, causal_lm_architectures, direct_logprobs, tiny_architecture

NAMES = dict(causal_lm_architectures())


def _trained(model_type: str, seed: int = 0, **overrides):
    arch = tiny_architecture(model_type, NAMES[model_type])
    arch = type(arch)(arch.model_type, arch.class_name, {**arch.config, **overrides})
    return arch.config, build_trained(arch, seed)


def _tokens(n: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=n).astype(np.int64)


def _lean_without_transforms(model, tokens: np.ndarray) -> np.ndarray:
    """What the backend computed before the probe: base model, output embeddings, nothing after."""
    ids = torch.from_numpy(tokens)[None]
    with torch.no_grad():
        hidden = model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden)[0, :-1].float()
        return torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).squeeze(1).numpy()


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [
        pytest.param("cohere", {"logit_scale": 0.0625}, id="cohere logit_scale (its default)"),
        pytest.param("granite", {"logits_scaling": 8.0}, id="granite logits_scaling"),
        pytest.param("gemma2", {"final_logit_softcapping": 2.0}, id="gemma2 final softcap"),
    ],
)
def test_post_head_transforms_are_served(make_server, snapshot_dir, model_type, overrides):
    config, model = _trained(model_type, **overrides)
    tokens = _tokens()
    expected = direct_logprobs(model, torch.from_numpy(tokens)).numpy()
    # The old path is visibly wrong on this model, so this test can fail.
    assert np.abs(_lean_without_transforms(model, tokens) - expected).max() > 0.05
    server = make_server(snapshot_dir)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, model, snapshot_dir, model_config=config)
        served = client.score([SequenceInput(tokens, spans=((0, 1, len(tokens)),))]).sequences[0].logprobs[1:]
    np.testing.assert_allclose(served, expected, rtol=0, atol=1e-5)


def test_gemma2_is_served_with_the_default_attention(make_server, snapshot_dir):
    config, model = _trained("gemma2")
    server = make_server(snapshot_dir)
    tokens = _tokens(30)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, model, snapshot_dir, model_config=config)
        served = client.score([SequenceInput(tokens, spans=((0, 1, 30),))]).sequences[0].logprobs[1:]
    assert server.running.engine.backend.model.config._attn_implementation == "eager"
    np.testing.assert_allclose(served, direct_logprobs(model, torch.from_numpy(tokens)).numpy(), rtol=0, atol=1e-5)


def _assert_refused_and_not_registered(server, client, version: int, error, fragment: str) -> None:
    assert isinstance(error, errors.InvalidRequest)
    assert fragment in error.message
    with pytest.raises(errors.VersionNotFound):
        client.get_version(version)
    assert server.running.engine.backend.model is None


def test_an_attention_implementation_the_architecture_refuses_fails_the_publish(make_server, snapshot_dir):
    config, model = _trained("gemma2")
    server = make_server(snapshot_dir, attn_implementation="sdpa")
    with LogitClient(server.address, timeout_s=60) as client:
        with pytest.raises(errors.InvalidRequest) as info:
            client.publish(0, model, snapshot_dir, model_config=config)
        _assert_refused_and_not_registered(server, client, 0, info.value, "sdpa")


def test_an_unknown_architecture_fails_the_publish(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir)
    with LogitClient(server.address, timeout_s=60) as client:
        with pytest.raises(errors.InvalidRequest) as info:
            client.publish(0, trained.states[0], snapshot_dir, model_config={**trained.config, "model_type": "no_such_lm"})
        _assert_refused_and_not_registered(server, client, 0, info.value, "no_such_lm")


def test_weights_that_do_not_fit_fail_the_publish(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir)
    weights = dict(trained.states[0])
    del weights["model.norm.weight"]
    with LogitClient(server.address, timeout_s=60) as client:
        with pytest.raises(errors.InvalidRequest) as info:
            client.publish(0, weights, snapshot_dir, model_config=trained.config)
        _assert_refused_and_not_registered(server, client, 0, info.value, "model.norm.weight")
        # Nothing was registered: once the refused directory is removed, good weights publish as version 0.
        shutil.rmtree(snapshot_dir / "v00000000")
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
        assert client.get_version(0).policy_version == 0


def test_a_refused_snapshot_found_by_the_directory_scan_is_not_registered(make_server, snapshot_dir):
    config, model = _trained("gemma2")
    write_snapshot(snapshot_dir, 0, model.state_dict(), config)
    server = make_server(snapshot_dir, attn_implementation="sdpa", scan_interval_s=0.05)
    with LogitClient(server.address, timeout_s=60) as client:
        with pytest.raises(errors.VersionNotFound):  # scoring looks the version up, rescans, refuses
            client.score([SequenceInput(_tokens(10), spans=((0, 1, 10),))])
        assert client.list_versions().latest_version is None


# --- temperature and non-finite values --------------------------------------------------------------


@pytest.fixture
def served(make_server, snapshot_dir, trained):
    server = make_server(snapshot_dir)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, trained.states[0], snapshot_dir, model_config=trained.config)
    channel = grpc.insecure_channel(server.address)
    yield server, pb_grpc.LogitServiceStub(channel)
    channel.close()


def _sequence(tokens: np.ndarray, version: int = 0) -> pb.Sequence:
    return pb.Sequence(
        token_ids=tokens.astype("<i4").tobytes(), spans=[pb.VersionSpan(policy_version=version, start=1, end=len(tokens))]
    )


@pytest.mark.parametrize("temperature", [1e-45, 1e-4, 2e3, float("inf"), float("nan")], ids=str)
def test_a_temperature_outside_the_bounds_is_invalid_argument(served, temperature):
    _, stub = served
    tokens = _tokens(20)
    for call, request in (
        (stub.Score, pb.ScoreRequest(sequences=[_sequence(tokens)], temperature=temperature)),
        (stub.SubmitSegments, pb.SubmitSegmentsRequest(segments=[_sequence(tokens)], temperature=temperature)),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call(request, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "temperature" in info.value.details()


@pytest.mark.parametrize("temperature", [1e-3, 1e3], ids=str)
def test_temperatures_at_the_bounds_give_finite_logprobs(served, trained, temperature):
    _, stub = served
    tokens = _tokens(20)
    response = stub.Score(pb.ScoreRequest(sequences=[_sequence(tokens)], temperature=temperature), timeout=30)
    logprobs = np.frombuffer(response.results[0].logprobs, dtype="<f4")  # the span: positions 1..19
    assert np.isfinite(logprobs).all()
    np.testing.assert_allclose(logprobs, trained.reference(0, tokens, np.float32(temperature))[1:], rtol=1e-5, atol=1e-3)


def test_the_client_refuses_such_a_temperature_before_sending(served):
    server, _ = served
    with LogitClient(server.address) as client, pytest.raises(ValueError, match="temperature"):
        client.score([SequenceInput(_tokens(10), spans=((0, 1, 10),))], temperature=1e-45)


def test_weights_giving_non_finite_logprobs_are_an_error_not_an_exact_answer(served, snapshot_dir, trained):
    server, _ = served
    weights = {k: v.clone() for k, v in trained.states[1].items()}
    weights["lm_head.weight"][7] = float("inf")  # every logit of token 7 overflows
    tokens = _tokens(20)
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(1, weights, snapshot_dir, model_config=trained.config)  # the model exists: no probe
        with pytest.raises(errors.LogitServiceError) as info:
            client.score([SequenceInput(tokens, spans=((1, 1, 20),))])
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert "non-finite" in info.value.message
        good = client.score([SequenceInput(tokens, spans=((0, 1, 20),))]).sequences[0].logprobs[1:]
    assert np.isfinite(good).all()


# --- the bf16 cast rule -----------------------------------------------------------------------------


def test_bf16_serving_matches_a_model_built_in_bf16_not_one_cast_to_it(make_server, snapshot_dir):
    """The documented rule: the server builds the model with dtype=bfloat16 at construction (rotary
    inv_freq stays float32), as `from_pretrained(..., dtype=torch.bfloat16)` does; a trainer that wants
    the same numbers builds its model that way, not with `model.to(torch.bfloat16)`."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config, model = _trained("llama", max_position_embeddings=4096)
    tokens = _tokens(200, seed=5)  # long enough for rotary rounding at large positions to show
    server = make_server(snapshot_dir, dtype="bfloat16")
    with LogitClient(server.address, timeout_s=60) as client:
        client.publish(0, model, snapshot_dir, model_config=config)
        served = client.score([SequenceInput(tokens, spans=((0, 1, len(tokens)),))]).sequences[0].logprobs[1:]

    values = {k: v for k, v in config.items() if k != "model_type"}
    built = AutoModelForCausalLM.from_config(LlamaConfig(**values), dtype=torch.bfloat16).eval()
    built.load_state_dict(model.state_dict())
    cast = AutoModelForCausalLM.from_config(LlamaConfig(**values), dtype=torch.float32).eval()
    cast.load_state_dict(model.state_dict())
    cast = cast.to(torch.bfloat16)
    assert built.model.rotary_emb.inv_freq.dtype == torch.float32
    assert cast.model.rotary_emb.inv_freq.dtype == torch.bfloat16

    ids = torch.from_numpy(tokens)
    built_error = float(np.abs(served - direct_logprobs(built, ids).numpy()).max())
    cast_error = float(np.abs(served - direct_logprobs(cast, ids).numpy()).max())
    fp32_error = float(np.abs(served - direct_logprobs(model, ids).numpy()).max())
    print(f"\nbf16 served vs: built in bf16 {built_error:.2e}, cast to bf16 {cast_error:.2e}, fp32 {fp32_error:.2e}")
    assert built_error <= 1e-5
    assert cast_error > 10 * max(built_error, 1e-6)  # the other cast is measurably different
