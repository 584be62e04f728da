"""ServerConfig bounds, LOGIT_SERVICE_* environment overrides, and the `serve` flags built from the config."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from logit_service.cli import _add_config_flags, config_from_args
from logit_service.config import ENV_PREFIX, ServerConfig, env_overrides

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_defaults_need_only_the_snapshot_dir(tmp_path):
    config = ServerConfig(snapshot_dir=tmp_path)

    assert config.snapshot_dir == tmp_path
    assert config.retention_window == 8
    assert config.dtype == "float32"
    assert config.batch_invariant is True
    assert config.redis_url is None


def test_every_field_is_documented():
    undocumented = [name for name, field in ServerConfig.model_fields.items() if not field.description]

    assert undocumented == []


def test_snapshot_dir_is_required():
    with pytest.raises(ValidationError, match="snapshot_dir"):
        ServerConfig()


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="retention_windw"):
        ServerConfig(snapshot_dir=tmp_path, retention_windw=4)


def test_config_is_frozen(tmp_path):
    config = ServerConfig(snapshot_dir=tmp_path)

    with pytest.raises(ValidationError):
        config.port = 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("port", 65536, id="port above 65535"),
        pytest.param("port", -1, id="negative port"),
        pytest.param("retention_window", 0, id="empty retention window"),
        pytest.param("cache_bytes", -1, id="negative cache budget"),
        pytest.param("dtype", "float16", id="unsupported dtype"),
        pytest.param("max_sequences_per_request", 0, id="zero sequences per request"),
        pytest.param("max_tokens_per_request", 0, id="zero tokens per request"),
        pytest.param("max_message_bytes", (4 << 20) - 1, id="message limit under 4 MiB"),
        pytest.param("max_batch_tokens", 63, id="batch under 64 tokens"),
        pytest.param("logprob_chunk_tokens", 0, id="empty logprob chunk"),
        pytest.param("scan_interval_s", 0.0, id="zero scan interval"),
        pytest.param("ewma_beta", 0.0, id="ewma beta 0"),
        pytest.param("ewma_beta", 1.0, id="ewma beta 1"),
        pytest.param("ewma_target_age", 0.0, id="zero ewma age"),
        pytest.param("heartbeat_s", 0.0, id="zero heartbeat"),
        pytest.param("grace_s", -0.5, id="negative grace"),
        pytest.param("max_concurrent_rpcs", 0, id="zero concurrent rpcs"),
        pytest.param("redis_namespace", "", id="empty redis namespace"),
    ],
)
def test_out_of_range_value_is_rejected(tmp_path, field, value):
    with pytest.raises(ValidationError, match=field):
        ServerConfig(snapshot_dir=tmp_path, **{field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("port", 0, id="port 0 picks a free one"),
        pytest.param("port", 65535, id="highest port"),
        pytest.param("retention_window", 1, id="window of one"),
        pytest.param("cache_bytes", 0, id="no cache"),
        pytest.param("max_message_bytes", 4 << 20, id="message limit of 4 MiB"),
        pytest.param("ewma_beta", 0.999, id="ewma beta just under 1"),
    ],
)
def test_boundary_value_is_accepted(tmp_path, field, value):
    assert getattr(ServerConfig(snapshot_dir=tmp_path, **{field: value}), field) == value


def test_batch_far_below_the_logprob_chunk_is_rejected(tmp_path):
    with pytest.raises(ValidationError, match="max_batch_tokens is far below logprob_chunk_tokens"):
        ServerConfig(snapshot_dir=tmp_path, max_batch_tokens=64, logprob_chunk_tokens=64 * 16 + 16)

    ServerConfig(snapshot_dir=tmp_path, max_batch_tokens=64, logprob_chunk_tokens=64 * 16)


@pytest.mark.parametrize(
    ("target_age", "beta"),
    [
        pytest.param(2.0, 2.0 / 3.0, id="age 2 gives 2/3"),
        pytest.param(1.0, 0.5, id="age 1 gives 1/2"),
        pytest.param(9.0, 0.9, id="age 9 gives 0.9"),
    ],
)
def test_resolved_ewma_beta_from_the_target_age(tmp_path, target_age, beta):
    config = ServerConfig(snapshot_dir=tmp_path, ewma_target_age=target_age)

    assert config.resolved_ewma_beta == pytest.approx(beta, rel=1e-15)
    # The centre of mass β/(1−β) of the EWMA weights is the target age.
    assert config.resolved_ewma_beta / (1 - config.resolved_ewma_beta) == pytest.approx(target_age, rel=1e-12)


def test_explicit_ewma_beta_wins_over_the_target_age(tmp_path):
    config = ServerConfig(snapshot_dir=tmp_path, ewma_beta=0.25, ewma_target_age=2.0)

    assert config.resolved_ewma_beta == 0.25


def test_a_misspelt_environment_variable_is_an_error_not_ignored(tmp_path):
    with pytest.raises(ValueError, match="LOGIT_SERVICE_RETENTION_WINDOWS"):
        env_overrides({"LOGIT_SERVICE_RETENTION_WINDOWS": "3", "LOGIT_SERVICE_PORT": "1"})


def test_env_overrides_reads_only_logit_service_variables(tmp_path):
    environ = {
        "LOGIT_SERVICE_PORT": "6001",
        "LOGIT_SERVICE_RETENTION_WINDOW": "3",
        "LOGIT_SERVICE_DELETE_EVICTED": "false",
        "LOGIT_SERVICE_SNAPSHOT_DIR": str(tmp_path),
        "LOGIT_SERVICE_REDIS_URL": "",  # empty means unset
        "PORT": "7000",
        "logit_service_grace_s": "9",  # the names are upper case
    }

    overrides = env_overrides(environ)

    assert overrides == {
        "port": "6001",
        "retention_window": "3",
        "delete_evicted": "false",
        "snapshot_dir": str(tmp_path),
    }
    config = ServerConfig(**overrides)
    assert (config.port, config.retention_window, config.delete_evicted) == (6001, 3, False)
    assert config.snapshot_dir == tmp_path


def test_env_overrides_defaults_to_the_process_environment(monkeypatch):
    monkeypatch.setenv("LOGIT_SERVICE_MAX_CONCURRENT_RPCS", "5")

    assert env_overrides()["max_concurrent_rpcs"] == "5"


def test_out_of_range_env_value_is_rejected(tmp_path):
    overrides = env_overrides({"LOGIT_SERVICE_SNAPSHOT_DIR": str(tmp_path), "LOGIT_SERVICE_PORT": "70000"})

    with pytest.raises(ValidationError, match="port"):
        ServerConfig(**overrides)


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logit-service serve")
    _add_config_flags(parser)
    return parser


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    return monkeypatch


def test_flags_override_the_environment(tmp_path, clean_env):
    clean_env.setenv("LOGIT_SERVICE_SNAPSHOT_DIR", str(tmp_path / "from-env"))
    clean_env.setenv("LOGIT_SERVICE_PORT", "6001")
    clean_env.setenv("LOGIT_SERVICE_RETENTION_WINDOW", "3")
    clean_env.setenv("LOGIT_SERVICE_DELETE_EVICTED", "true")
    clean_env.setenv("LOGIT_SERVICE_DTYPE", "bfloat16")

    args = _serve_parser().parse_args(
        ["--snapshot-dir", str(tmp_path / "from-flag"), "--port", "7002", "--no-delete-evicted"]
    )
    config = config_from_args(args)

    assert config.snapshot_dir == tmp_path / "from-flag"
    assert config.port == 7002
    assert config.delete_evicted is False
    # Not given as flags: the environment still applies.
    assert config.retention_window == 3
    assert config.dtype == "bfloat16"


def test_flags_alone_build_a_config(tmp_path, clean_env):
    args = _serve_parser().parse_args(["--snapshot-dir", str(tmp_path), "--ewma-beta", "0.5", "--batch-invariant"])

    config = config_from_args(args)

    assert config == ServerConfig(snapshot_dir=tmp_path, ewma_beta=0.5, batch_invariant=True)


def test_namespace_without_a_value_keeps_the_environment(tmp_path, clean_env):
    clean_env.setenv("LOGIT_SERVICE_PORT", "6001")
    args = argparse.Namespace(snapshot_dir=str(tmp_path), port=None, log_level="DEBUG", command="serve")

    config = config_from_args(args)

    assert config.port == 6001
    assert config.snapshot_dir == tmp_path


def test_invalid_flag_value_is_rejected(tmp_path, clean_env):
    args = _serve_parser().parse_args(["--snapshot-dir", str(tmp_path), "--retention-window", "0"])

    with pytest.raises(ValidationError, match="retention_window"):
        config_from_args(args)


def test_serve_help_names_every_flag_and_environment_variable():
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "clients"), str(REPO_ROOT)])
    env["COLUMNS"] = "80"  # a plain terminal; argparse wraps to it
    result = subprocess.run(
        [sys.executable, "-m", "logit_service.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env=env,
    )

    assert result.returncode == 0, result.stderr
    text = result.stdout
    missing = []
    for name in ServerConfig.model_fields:
        flag = "--" + name.replace("_", "-")
        if not re.search(re.escape(flag) + r"\b(?!-)", text):
            missing.append(flag)
        variable = ENV_PREFIX + name.upper()
        if not re.search(rf"\b{variable}\b", text):
            missing.append(variable)
    assert missing == []
    for name in ("delete_evicted", "batch_invariant", "ewma_enabled"):
        assert "--no-" + name.replace("_", "-") in text


@pytest.mark.parametrize("value", [None, "auto", ""], ids=["unset", "auto", "empty"])
def test_attention_implementation_defaults_to_the_architectures_own_choice(tmp_path, value):
    kwargs = {} if value is None else {"attn_implementation": value}
    assert ServerConfig(snapshot_dir=tmp_path, **kwargs).attn_implementation is None


def test_an_explicit_attention_implementation_is_kept(tmp_path):
    assert ServerConfig(snapshot_dir=tmp_path, attn_implementation="eager").attn_implementation == "eager"


def test_version_comes_from_one_source(capsys):
    import logit_client
    import logit_service
    from logit_service.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"logit-service {logit_service.__version__}"
    assert logit_client.__version__ == logit_service.__version__


def test_serve_accepts_log_level_after_the_subcommand(tmp_path, capsys):
    from logit_service.cli import main

    # A bad bound stops it before any server starts; what matters is that --log-level was accepted.
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--log-level", "DEBUG", "--snapshot-dir", str(tmp_path), "--max-batch-tokens", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--max-batch-tokens=1: Input should be greater than or equal to 64" in err
    assert "unrecognized arguments" not in err


def test_every_config_field_has_exactly_one_flag_group():
    from logit_service.cli import FLAG_GROUPS

    grouped = [name for names in FLAG_GROUPS.values() for name in names]

    assert sorted(grouped) == sorted(ServerConfig.model_fields)
    assert len(grouped) == len(set(grouped))


def test_serve_help_lists_flags_under_their_groups():
    from logit_service.cli import FLAG_GROUPS, build_parser

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    groups = {g.title: {a.dest for a in g._group_actions} for g in serve._action_groups}

    for title, names in FLAG_GROUPS.items():
        assert groups[title] == set(names)


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        pytest.param(["--log-level", "DEBUG", "demo"], "DEBUG", id="before the subcommand"),
        pytest.param(["demo", "--log-level", "error"], "ERROR", id="after demo, lower case"),
        pytest.param(["--log-level", "DEBUG", "serve", "--log-level", "WARNING"], "WARNING", id="the later one wins"),
        pytest.param(["serve"], None, id="unset"),
    ],
)
def test_log_level_is_accepted_before_and_after_the_subcommand(argv, level):
    from logit_service.cli import build_parser

    assert build_parser().parse_args(argv).log_level == level


def test_an_unknown_log_level_is_refused_with_the_choices(capsys):
    from logit_service.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--log-level", "LOUD"])
    err = capsys.readouterr().err
    assert "invalid choice: 'LOUD'" in err and "DEBUG" in err


@pytest.mark.parametrize(
    ("flag", "value", "choices"),
    [
        pytest.param("--dtype", "float16", "'float32', 'bfloat16'", id="dtype"),
        pytest.param("--backend", "onnx", "'torch', 'vllm'", id="backend"),
        pytest.param("--access-log", "xml", "'off', 'text', 'json'", id="access log"),
    ],
)
def test_a_value_outside_the_choices_gets_one_short_line(tmp_path, capsys, flag, value, choices):
    from logit_service.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--snapshot-dir", str(tmp_path), flag, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: invalid choice: '{value}' (choose from {choices})" in err
    assert len(err.strip().splitlines()) == 2  # the usage line and the error


def test_invalid_settings_are_one_line_each_named_as_given(tmp_path, clean_env, capsys):
    from logit_service.cli import main

    clean_env.setenv("LOGIT_SERVICE_PORT", "70000")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--snapshot-dir", str(tmp_path), "--retention-window", "0", "--ewma-beta", "x"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[1] == "logit-service serve: error: invalid settings:"
    assert sorted(line.strip() for line in lines[2:]) == [
        "--ewma-beta=x: Input should be a valid number, unable to parse string as a number",
        "--retention-window=0: Input should be greater than or equal to 1",
        "LOGIT_SERVICE_PORT=70000: Input should be less than or equal to 65535",
    ]
    assert "pydantic" not in err and "validation error" not in err  # no raw pydantic dump


def test_a_missing_snapshot_dir_names_the_flag_and_the_variable(clean_env, capsys):
    from logit_service.cli import main

    with pytest.raises(SystemExit):
        main(["serve"])

    assert "--snapshot-dir is required (or set LOGIT_SERVICE_SNAPSHOT_DIR)" in capsys.readouterr().err


def test_a_rule_across_settings_names_the_flags(tmp_path, clean_env, capsys):
    from logit_service.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--snapshot-dir", str(tmp_path), "--tls-key-file", str(tmp_path / "key.pem")])

    assert "--tls-cert-file and --tls-key-file go together" in capsys.readouterr().err


def test_a_misspelt_environment_variable_stops_serve_with_its_name(tmp_path, clean_env, capsys):
    from logit_service.cli import main

    clean_env.setenv("LOGIT_SERVICE_RETENTION_WINDOWS", "3")
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--snapshot-dir", str(tmp_path)])

    assert exit_info.value.code == 2
    assert "unknown environment variable(s) LOGIT_SERVICE_RETENTION_WINDOWS" in capsys.readouterr().err
