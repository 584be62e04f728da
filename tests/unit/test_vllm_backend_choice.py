"""Choosing the vLLM backend by configuration, and its temperature rule, without vLLM installed."""

from __future__ import annotations

import sys

import pytest

from logit_service.backends.factory import make_backend
from logit_service.backends.vllm_backend import check_temperature, with_architectures
from logit_service.config import ServerConfig
from logit_service.errors import InvalidRequest


def test_the_backend_is_chosen_by_configuration(tmp_path):
    assert make_backend(ServerConfig(snapshot_dir=tmp_path)).name == "torch"
    backend = make_backend(ServerConfig(snapshot_dir=tmp_path, backend="vllm", dtype="bfloat16"))
    assert (backend.name, backend.numerics, backend.dtype) == ("vllm", "inference", "bfloat16")
    assert backend.model is None  # the engine starts on first use


def test_building_the_vllm_backend_imports_no_vllm(tmp_path):
    had_vllm = "vllm" in sys.modules
    make_backend(ServerConfig(snapshot_dir=tmp_path, backend="vllm"))
    assert ("vllm" in sys.modules) == had_vllm


@pytest.mark.parametrize("temperature", [pytest.param(0.7, id="below 1"), pytest.param(1.3, id="above 1")])
def test_a_temperature_other_than_one_is_refused(temperature):
    with pytest.raises(InvalidRequest, match="temperature 1.0 only"):
        check_temperature(temperature)
    check_temperature(1.0)


def test_a_config_without_architectures_gets_the_causal_lm_class_of_its_model_type():
    assert with_architectures({"model_type": "qwen2"})["architectures"] == ["Qwen2ForCausalLM"]
    assert with_architectures({"model_type": "qwen2", "architectures": ["X"]})["architectures"] == ["X"]
