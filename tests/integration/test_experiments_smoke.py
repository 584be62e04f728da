"""Smoke run of the asynchronous-RL experiment: every arm for a few versions through the real service
(gRPC on 127.0.0.1), the three exact strategies bit-identical, every result field present and finite,
and the report made from the JSON files alone."""

from __future__ import annotations

import json
import math

import pytest

from experiments.async_rl.cli import main, write_result
from experiments.async_rl.config import ARMS, EXACT_ARMS, RunConfig
from experiments.async_rl.grid import check_exact_identity, exact_disagreement
from experiments.async_rl.pipeline import run

pytestmark = pytest.mark.slow

TINY = dict(versions=3, digits=3, prompts_per_version=2, group_size=4, eval_prompts=8, hidden_size=32, metrics_sequences=4, spot_check_sequences=2)
SUMMARY_FIELDS = ("auc", "final_reward", "masked_frac_mean", "clip_frac_mean", "disc_abs_mean", "ewma_abs_err_mean", "wall_s")
VERSION_FIELDS = ("eval_reward", "train_reward", "masked_frac", "clip_frac", "disc_abs", "ewma_abs_err", "rollout_s", "stall_s", "old_wait_s", "train_s")
SYSTEM_FIELDS = ("old_wait_s_per_version", "rollout_stall_s_per_switch", "extra_snapshot_bytes_held", "tokens_scored_per_s", "version_s")
NOT_APPLICABLE = {"exact_max_err", "spot_check_error"}  # null where the run has no such quantity


def _numbers(value, path=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _numbers(v, f"{path}[{i}]")
    else:
        yield path, value


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("async-rl")
    records = {}
    for arm in ARMS:
        config = RunConfig(arm=arm, staleness=0 if arm == "sync" else 2, turns=2, **TINY)
        records[arm] = run(config)
        write_result(records[arm], out / "default-t2", config.file_name())
    return out, records


def test_every_field_is_present_and_finite(results):
    _, records = results
    for arm, record in records.items():
        for field in SUMMARY_FIELDS:
            assert math.isfinite(record[field]), (arm, field)
        for field in SYSTEM_FIELDS:
            assert math.isfinite(record["system"][field]), (arm, field)
        assert record["args"]["arm"] == arm and len(record["per_version"]) == TINY["versions"]
        for row in record["per_version"]:
            for field in VERSION_FIELDS:
                assert math.isfinite(row[field]), (arm, field)
        results_only = {k: v for k, v in record.items() if k != "args"}  # args keep None for "the default"
        for path, value in _numbers(results_only):
            if value is None:
                assert path.rsplit(".", 1)[-1] in NOT_APPLICABLE, (arm, path)
            elif isinstance(value, float):
                assert math.isfinite(value), (arm, path)
        json.dumps(record, allow_nan=False)


def test_exact_strategies_give_bit_identical_old_logprobs(results):
    _, records = results
    digests = {arm: records[arm]["old_logprobs_sha256"] for arm in EXACT_ARMS}
    assert len(set(digests.values())) == 1, digests
    for arm in EXACT_ARMS:
        assert records[arm]["exact_frac"] == 1.0
        assert records[arm]["system"]["exact_max_err"] <= 1e-5
        per_version = [row["old_logprobs_sha256"] for row in records[arm]["per_version"]]
        assert per_version == [row["old_logprobs_sha256"] for row in records["exact-snapshot"]["per_version"]]
    # What `run --arm a,b,...` and `grid` check: no disagreement here, and one changed bit is reported.
    assert exact_disagreement(records) is None
    assert check_exact_identity(results[0]) == []
    tampered = {arm: dict(records[arm]) for arm in EXACT_ARMS}
    rows = [dict(row) for row in tampered["exact-follower"]["per_version"]]
    rows[1]["old_logprobs_sha256"] = "0" * 64
    tampered["exact-follower"]["per_version"] = rows
    assert exact_disagreement(tampered).startswith("version 1:")
    # The barrier keeps one version, the snapshot strategy k+1; only the barrier stalls the rollout.
    assert records["exact-barrier"]["effective"]["retention_window"] == 1
    assert records["exact-snapshot"]["system"]["extra_snapshot_bytes_held"] > 0
    assert records["exact-snapshot"]["system"]["rollout_stall_s_per_switch"] == 0.0


def test_partial_rollouts_span_versions_and_staleness(results):
    _, records = results
    rows = records["exact-snapshot"]["per_version"]
    assert rows[-1]["staleness_mean"] > 1.0  # tokens from two versions, consumed two versions later
    assert all(row["staleness_mean"] == 0.0 for row in records["sync"]["per_version"])
    assert records["bypass"]["masked_frac_mean"] == 0.0  # μ as its own anchor: the mask cannot fire


def test_report_is_made_from_the_json_files(results, tmp_path):
    out, _ = results
    assert main(["report", "--results", str(out), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    assert "exact-follower" in text and "Bit-identical" in text
    assert list(tmp_path.glob("*.png"))


def test_run_command_writes_its_cell(tmp_path):
    assert main(["run", "--arm", "bypass", "--staleness", "1", "--window", "0.5,2", "--seed", "3",
                 "--out", str(tmp_path), "--versions", "2"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "bypass-k1-0.5_2-s3.json").read_text())
    assert record["args"]["window"] == [0.5, 2.0] and record["args"]["seed"] == 3
