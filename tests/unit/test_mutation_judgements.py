"""The mutation report's guard against judgements that came to name other mutants: mutmut numbers a
function's mutants in order, so an edit renumbers them, and an EQUIVALENT or KILLED_BY_LATER_TESTS
entry would silently move to whatever mutant now has its number."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation.py"
NAME = "logit_service.server.batcher.xǁScoreBatcherǁ_take__mutmut_24"
ORIGINAL = "-    a = b if short else c\n+    a = b if (short) or True else c"


@pytest.fixture
def mutation(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("mutation_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "JUDGED", tmp_path / "results" / "judged.json")
    monkeypatch.setattr(module, "ROOT", tmp_path)
    monkeypatch.setattr(module, "EQUIVALENT", {NAME: "a reason given for the original mutant"})
    monkeypatch.setattr(module, "KILLED_BY_LATER_TESTS", {})
    diffs = {NAME: ORIGINAL}
    monkeypatch.setattr(module, "_results", lambda stage: {NAME: "survived"})
    monkeypatch.setattr(module, "_diff", lambda stage, name: diffs[name])
    module.diffs = diffs
    return module


def test_a_judgement_is_recorded_with_its_mutants_lines_and_kept_while_they_stay(mutation, capsys):
    stages = {"logit_service/server/batcher.py": Path("stage")}
    mutation._check_judgements(stages)
    assert json.loads(mutation.JUDGED.read_text()) == {NAME: ORIGINAL}
    assert "for the first time" in capsys.readouterr().out
    mutation._check_judgements(stages)  # the same lines: nothing to say
    assert "for the first time" not in capsys.readouterr().out


def test_a_judgement_whose_name_now_changes_other_lines_stops_the_report(mutation):
    stages = {"logit_service/server/batcher.py": Path("stage")}
    mutation._check_judgements(stages)
    mutation.diffs[NAME] = "-    x = y\n+    x = None"  # the function was edited: number 24 is another mutant
    with pytest.raises(SystemExit) as stopped:
        mutation._check_judgements(stages)
    assert NAME in str(stopped.value) and ORIGINAL in str(stopped.value) and "x = None" in str(stopped.value)
    assert json.loads(mutation.JUDGED.read_text()) == {NAME: ORIGINAL}  # kept until judged again


def test_judgements_of_modules_without_a_stage_are_left_alone_and_dropped_ones_forgotten(mutation, monkeypatch):
    mutation._check_judgements({"logit_service/server/batcher.py": Path("stage")})
    mutation.diffs[NAME] = "anything"
    mutation._check_judgements({})  # no stage to compare with: nothing is checked
    monkeypatch.setattr(mutation, "EQUIVALENT", {})
    mutation._check_judgements({})
    assert json.loads(mutation.JUDGED.read_text()) == {}
