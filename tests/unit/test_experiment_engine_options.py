"""The rollout-engine options of the asynchronous-RL experiment: torch-engine records keep their old form,
vLLM cells get their own defaults and study, and inconsistent options are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from experiments.async_rl.config import RunConfig
from experiments.async_rl.grid import cells_for

RESULTS = Path(__file__).resolve().parents[2] / "experiments" / "results"


def test_torch_engine_records_keep_the_arguments_written_before_the_options_existed():
    written = json.loads((RESULTS / "default-t1" / "exact-snapshot-k4-0.8_1.25-s0.json").read_text())["args"]
    config = RunConfig(**written)
    assert config.rollout_engine == "torch" and config.attention_heads == 4
    assert config.record_args() == written  # so `grid` still sees the cell as written


def test_vllm_cells_add_no_noise_use_two_heads_and_say_so_in_their_record():
    config = RunConfig(arm="recompute", staleness=4, rollout_engine="vllm")
    assert config.logit_noise == 0.0 and config.attention_heads == 2 and config.vllm_dtype == "bfloat16"
    args = config.record_args()
    assert args["rollout_engine"] == "vllm" and args["attention_heads"] == 2
    assert RunConfig(**args) == config


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(rollout_engine="vllm", logit_noise=0.05), "torch rollout engine only"),
        (dict(vllm_dtype="float32"), "vLLM rollout engine only"),
        (dict(attention_heads=3), "not a multiple"),
    ],
)
def test_inconsistent_engine_options_are_refused(options, message):
    with pytest.raises(ValidationError, match=message):
        RunConfig(arm="recompute", staleness=4, **options)


def test_grid_puts_cells_that_differ_from_the_defaults_in_their_own_study():
    def study(**engine):
        (cell,) = cells_for(["recompute"], [4], [(0.8, 1.25)], [0], versions=20, engine=engine)
        return cell.study, cell.command(Path("out"))

    assert study()[0] == "default-t1"
    assert study(attention_heads=2)[0] == "default-h2-t1"
    name, command = study(rollout_engine="vllm", vllm_dtype="bfloat16")
    assert name == "vllm-default-h2-t1"
    assert command[-6:] == ["--rollout-engine", "vllm", "--vllm-dtype", "bfloat16", "--attention-heads", "2"]
    assert study(rollout_engine="vllm", vllm_dtype="float32")[0] == "vllm-float32-default-h2-t1"


def test_grid_study_option_sends_the_cells_to_that_study_and_skips_those_written_there(tmp_path, capsys):
    from experiments.async_rl.cli import main

    argv = ["grid", "--arms", "recompute", "--staleness", "1,2", "--seeds", "0", "--windows", "0.8,1.25", "--versions", "3",
            "--study", "cost-x", "--out", str(tmp_path), "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 cells, 0 already written, 2 to run" in printed
    assert printed.count(f"--out {tmp_path / 'cost-x'} ") == 2
    # A cell already in that study (written by `run` with the same arguments) is not run again.
    (cell,) = [c for c in cells_for(["recompute"], [1], [(0.8, 1.25)], [0], versions=3, study="cost-x")]
    path = cell.path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"args": cell.config.record_args()}))
    assert main(argv) == 0
    assert "2 cells, 1 already written, 1 to run" in capsys.readouterr().out
