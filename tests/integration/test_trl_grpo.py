"""TRL's GRPO trainer trains a tiny model through a real service: every version published, old log-probs served.

The example's trainer (examples/trl_grpo.py) runs for real: generation runs ahead of the optimiser, so each
round of completions is trained over four optimiser steps. The test records what every loss used and
checks it against a direct forward with the weights of the snapshot that generated the completions.
"""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("trl")

from trl import GRPOTrainer  # noqa: E402

from examples.trl_grpo import make_trainer  # noqa: E402
from logit_client import LogitClient  # noqa: E402
from logit_client.integrations.trl_grpo import ServiceGRPOTrainer  # noqa: E402
from logit_service.demo.tiny_model import reference_logprobs  # noqa: E402

ROUND_STEPS = 4  # steps_per_generation * num_iterations in the example: one round feeds four optimiser steps


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


def _check_against_snapshots(recorded: list[dict], snapshot_dir) -> tuple[list[int], float]:
    """Every old log-prob a loss used against a direct forward under the version that generated its token.

    Returns the staleness of each loss (trainer version minus the oldest generating version) and the
    largest error."""
    staleness = []
    worst = 0.0
    models: dict[int, torch.nn.Module] = {}
    for batch in recorded:
        versions = batch["completion_versions"]
        generated = batch["completion_mask"].bool()
        assert (versions[~generated] == -1).all()
        staleness.append(batch["global_step"] - int(versions[generated].min()))
        for row in range(versions.size(0)):
            prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]
            n = int(generated[row].sum())
            completion = batch["completion_ids"][row, :n]
            used = batch["old_per_token_logps"][row, :n]
            for version in versions[row, :n].unique().tolist():
                model = models.setdefault(version, _snapshot_model(snapshot_dir, version))
                expected = reference_logprobs(model, torch.cat([prompt, completion]))[len(prompt):]
                here = versions[row, :n] == version
                worst = max(worst, float((used[here] - expected[here]).abs().max()))
            assert (batch["old_per_token_logps"][row, n:] == 0).all()
    return staleness, worst


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
    server = make_server(snapshot_dir, retention_window=ROUND_STEPS + 1)
    with LogitClient(server.address, timeout_s=60) as client:
        trainer = make_trainer(client, snapshot_dir, tmp_path / "out", max_steps=ROUND_STEPS,
                               trainer_class=RecordingTrainer)  # fmt: skip
        trainer.train()
        published = sorted(v.policy_version for v in client.list_versions().versions)

    # Every optimiser step published a version, and the initial weights were version 0.
    assert published == list(range(ROUND_STEPS + 1))
    # No old log-prob came from a local forward: every no-grad forward TRL would have run was served.
    assert local_forward_calls["no_grad"] == 0
    assert local_forward_calls["grad"] == len(trainer.recorded) == ROUND_STEPS

    staleness, worst = _check_against_snapshots(trainer.recorded, snapshot_dir)
    print(f"\nTRL GRPO through the service: staleness per loss {staleness}; "
          f"max |old log-prob used - direct forward of its version| {worst:.2e}")  # fmt: skip
    assert worst <= 1e-5
    # Generation ran ahead: the same old log-probs served losses 0..3 optimiser steps after their version.
    assert staleness == [0, 1, 2, 3]
    for batch in trainer.recorded:  # without a rollout_func, one round is one generating version
        assert batch["completion_versions"][batch["completion_mask"].bool()].unique().numel() == 1


@pytest.mark.slow
def test_lagging_rollout_switching_weights_mid_completion_is_scored_per_token(make_server, tmp_path):
    """A rollout_func whose engine takes new weights halfway through a round: the first half of those
    completions comes from a version four steps old, which the trainer no longer holds."""
    snapshot_dir = tmp_path / "snapshots"
    server = make_server(snapshot_dir, retention_window=2 * ROUND_STEPS + 1)
    with LogitClient(server.address, timeout_s=60) as client:
        trainer = make_trainer(client, snapshot_dir, tmp_path / "out", max_steps=2 * ROUND_STEPS, rollout_lag=4,
                               trainer_class=RecordingTrainer)  # fmt: skip
        trainer.train()

    second_round = [b for b in trainer.recorded if b["global_step"] >= ROUND_STEPS]
    assert second_round
    for batch in second_round:
        versions = batch["completion_versions"]
        long_rows = batch["completion_mask"].sum(1) > 4  # rows still generating when the weights changed
        assert long_rows.any()
        for row in torch.nonzero(long_rows).flatten().tolist():
            assert versions[row, :4].unique().tolist() == [0]  # the engine's old weights ...
            n = int(batch["completion_mask"][row].sum())
            assert versions[row, 4:n].unique().tolist() == [4]  # ... then the trainer's weights of the round
    staleness, worst = _check_against_snapshots(trainer.recorded, snapshot_dir)
    print(f"\nlagging rollout: staleness per loss {staleness}; max |old log-prob - direct forward| {worst:.2e}")
    assert worst <= 1e-5
    assert max(staleness) == 7  # version 0 tokens trained at version 7
    # Versions 0 and 4 differ: had the first half been scored under the trainer's weights of the round, the
    # check above would have failed.
    batch = second_round[0]
    row = int(torch.nonzero(batch["completion_mask"].sum(1) > 4)[0])
    prompt = batch["prompt_ids"][row][batch["prompt_mask"][row].bool()]
    completion = batch["completion_ids"][row, : int(batch["completion_mask"][row].sum())]
    under_4 = reference_logprobs(_snapshot_model(snapshot_dir, 4), torch.cat([prompt, completion]))[len(prompt):]
    assert float((under_4[:4] - batch["old_per_token_logps"][row, :4]).abs().max()) > 1e-4


def test_other_weights_give_other_logprobs_so_the_check_can_fail(tmp_path):
    """Two random initialisations give different log-probs for the same tokens, far above the tolerance."""
    from examples.trl_grpo import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    tokens = torch.tensor(tokenizer("1 2 3 4 7777777")["input_ids"])
    first, second = build_model(tokenizer, seed=0), build_model(tokenizer, seed=1)
    gap = (reference_logprobs(first.eval(), tokens)[1:] - reference_logprobs(second.eval(), tokens)[1:]).abs().max()
    assert float(gap) > 1e-3
