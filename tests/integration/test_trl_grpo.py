"""TRL's GRPO trainer trains a tiny model through a real service: every version published, old log-probs served.

The example's trainer (examples/trl_grpo.py) runs for real: generation runs ahead of the optimiser, so each
round of completions is trained over four optimiser steps. The test records what every loss used and
checks it against a direct forward with the weights of the snapshot that generated the completions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from examples.trl_grpo import make_trainer  # noqa: E402
from logit_client import LogitClient  # noqa: E402
from logit_client.integrations.trl_grpo import ServiceGRPOTrainer  # noqa: E402
from logit_service.demo.tiny_model import reference_logprobs  # noqa: E402

MAX_STEPS = 8  # two generation rounds of four optimiser steps each


class RecordingTrainer(ServiceGRPOTrainer):
    """Keeps, for every loss, the batch it saw and the version the trainer was at."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.recorded: list[dict] = []

    def _compute_loss(self, model, inputs):
        keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "old_per_token_logps",
                "completion_versions")  # fmt: skip
        self.recorded.append({"global_step": self.state.global_step, **{k: inputs[k].clone() for k in keys}})
        return super()._compute_loss(model, inputs)


def _snapshot_model(snapshot_dir, version: int) -> torch.nn.Module:
    """The model as the service holds it: built from the snapshot's config, loaded from its weights file."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = snapshot_dir / f"v{version:08d}"
    config = AutoConfig.for_model(**json.loads((path / "config.json").read_text()))
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(load_file(path / "model.safetensors"))
    return model.eval()


@pytest.fixture
def local_forward_calls(monkeypatch):
    """Counts TRL's own log-prob forwards, split by whether they build a graph (the loss) or not (old log-probs)."""
    calls = {"no_grad": 0, "grad": 0}
    original = GRPOTrainer._get_per_token_logps_and_entropies

    def counting(self, *args, **kwargs):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(GRPOTrainer, "_get_per_token_logps_and_entropies", counting)
    return calls


@pytest.mark.slow
def test_grpo_trains_through_the_service_with_served_old_logprobs(make_server, tmp_path, local_forward_calls):
    snapshot_dir = tmp_path / "snapshots"
    server = make_server(snapshot_dir, retention_window=MAX_STEPS + 1)
    with LogitClient(server.address, timeout_s=60) as client:
        trainer = make_trainer(client, snapshot_dir, tmp_path / "out", max_steps=MAX_STEPS,
                               trainer_class=RecordingTrainer)  # fmt: skip
        trainer.train()
        published = sorted(v.policy_version for v in client.list_versions().versions)

    # Every optimiser step published a version, and the initial weights were version 0.
    assert published == list(range(MAX_STEPS + 1))
    # No old log-prob came from a local forward: every no-grad forward TRL would have run was served.
    assert local_forward_calls["no_grad"] == 0
    assert local_forward_calls["grad"] == len(trainer.recorded) == MAX_STEPS

    staleness = []
    worst = 0.0
    models: dict[int, torch.nn.Module] = {}
    for batch in trainer.recorded:
        versions = batch["completion_versions"]
        generated = batch["completion_mask"].bool()
        assert (versions[~generated] == -1).all()
        round_versions = versions[generated].unique().tolist()
        assert len(round_versions) == 1  # one round, one generating version
        version = round_versions[0]
        staleness.append(batch["global_step"] - version)
        model = models.setdefault(version, _snapshot_model(snapshot_dir, version))
        for row in range(versions.size(0)):
            prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]
            n = int(generated[row].sum())
            completion = batch["completion_ids"][row, :n]
            expected = reference_logprobs(model, torch.cat([prompt, completion]))[len(prompt):]
            used = batch["old_per_token_logps"][row, :n]
            worst = max(worst, float((used - expected).abs().max()))
            assert (batch["old_per_token_logps"][row, n:] == 0).all()
    print(f"\nTRL GRPO through the service: staleness per loss {staleness}; "
          f"max |old log-prob used - direct forward of its version| {worst:.2e}")  # fmt: skip
    assert worst <= 1e-5
    # Generation ran ahead: the same old log-probs served losses 0..3 optimiser steps after their version.
    assert sorted(set(staleness)) == [0, 1, 2, 3]


def test_other_weights_give_other_logprobs_so_the_check_can_fail(tmp_path):
    """Two random initialisations give different log-probs for the same tokens, far above the tolerance."""
    from examples.trl_grpo import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    tokens = torch.tensor(tokenizer("1 2 3 4 7777777")["input_ids"])
    first, second = build_model(tokenizer, seed=0), build_model(tokenizer, seed=1)
    gap = (reference_logprobs(first.eval(), tokens)[1:] - reference_logprobs(second.eval(), tokens)[1:]).abs().max()
    assert float(gap) > 1e-3
