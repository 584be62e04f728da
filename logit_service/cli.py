"""The `logit-service` command: `serve` runs a replica, `demo` runs the end-to-end demonstration.

Every ServerConfig field is a flag of `serve` and an environment variable; flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import signal
import sys
import typing

from pydantic import ValidationError

from logit_service import __version__
from logit_service.config import ENV_PREFIX, ServerConfig, env_overrides

# This is argparse over the pydantic model rather than pydantic-settings' CLI source: argument groups,
# --flag/--no-flag pairs and one-line error messages are what `serve --help` needs, and pydantic-settings
# reads matching environment variables but ignores misspelt LOGIT_SERVICE_* names, which
# `env_overrides` refuses on purpose.
FLAG_GROUPS: dict[str, tuple[str, ...]] = {
    "network": ("host", "port", "advertise_address", "replica_id", "max_message_bytes", "grace_s"),
    "TLS and authentication": (
        "tls_cert_file", "tls_key_file", "tls_client_ca_file",
        "auth_token", "auth_token_file", "reader_token", "reader_token_file",
    ),
    "snapshots and retention": (
        "snapshot_dir", "retention_window", "max_leased_versions", "max_lease_holders", "max_lease_ttl_s",
        "cache_bytes", "delete_evicted", "scan_interval_s", "compact_snapshots", "compact_keyframe_interval",
    ),
    "snapshots without a shared disk": ("max_upload_bytes", "fetch_from", "fetch_timeout_s", "fetch_tls_ca_file"),
    "model and numerics": (
        "backend", "device", "dtype", "attn_implementation", "batch_invariant", "max_batch_tokens",
        "logprob_chunk_tokens", "keep_freed_memory",
    ),
    "batching across callers": ("tile_tokens", "tile_rows", "shrink_partial_tiles", "coalesce_window_s", "burst_gap_s"),
    "EWMA fallback": ("ewma_enabled", "ewma_beta", "ewma_target_age"),
    "limits": (
        "max_sequences_per_request", "max_tokens_per_request", "max_request_bytes", "max_inflight_request_bytes",
        "max_concurrent_rpcs", "max_probe_rpcs", "segment_cache_tokens", "segment_cache_bytes", "max_pending_tokens",
        "max_pending_bytes",
    ),
    "registry": ("redis_url", "redis_namespace", "heartbeat_s"),
    "metrics and logging": ("metrics_port", "access_log"),
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _choices(annotation: typing.Any) -> tuple[str, ...] | None:
    """The values of a Literal field (also inside `Literal[...] | None`), for argparse's own check."""
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(a) for a in typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) is typing.Literal:
            return tuple(str(a) for a in typing.get_args(arg))
    return None


def _add_flag(group: argparse._ArgumentGroup, name: str) -> None:
    field = ServerConfig.model_fields[name]
    default = "required" if field.is_required() else f"default: {field.default}"
    help_text = f"{field.description or ''} [{default}; env {_env(name)}]"
    if field.annotation is bool:
        group.add_argument(_flag(name), dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
    elif (choices := _choices(field.annotation)) is not None:
        group.add_argument(_flag(name), dest=name, default=None, choices=choices, help=help_text)
    else:
        group.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=help_text)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            _add_flag(group, name)
    ungrouped = [n for n in ServerConfig.model_fields if not any(n in names for names in FLAG_GROUPS.values())]
    if ungrouped:  # a new field still gets its flag; the unit tests ask for it to be given a group
        group = parser.add_argument_group("other")
        for name in ungrouped:
            _add_flag(group, name)


def _given_flags(args: argparse.Namespace) -> dict[str, typing.Any]:
    return {k: v for k, v in vars(args).items() if k in ServerConfig.model_fields and v is not None}


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    values = env_overrides()
    values.update(_given_flags(args))
    return ServerConfig(**values)


def _flag_if_field(match: re.Match) -> str:
    return _flag(match[0]) if match[0] in ServerConfig.model_fields else match[0]


def describe_validation_error(error: ValidationError, flags_given: set[str]) -> str:
    """One line per bad setting, named as the user gave it (the flag, or the environment variable)."""
    lines = []
    for item in error.errors(include_url=False):
        loc = item.get("loc") or ()
        name = str(loc[0]) if loc else None
        message = item["msg"].removeprefix("Value error, ")
        if name is None or name not in ServerConfig.model_fields:
            # A rule across settings (the model validator) names fields; say them as flags.
            lines.append(re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", _flag_if_field, message))
            continue
        where = _flag(name) if name in flags_given else _env(name)
        if item["type"] == "missing":
            lines.append(f"{_flag(name)} is required (or set {_env(name)})")
        else:
            lines.append(f"{where}={item.get('input')!s}: {message}")
    return "\n".join(lines)


async def _serve(config: ServerConfig) -> None:
    from logit_service.server.app import start_server

    running = await start_server(config)
    print(f"logit-service listening on {running.address}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logging.getLogger(__name__).info("shutting down (grace %.1f s)", config.grace_s)
    await running.stop()


def _add_log_level(parser: argparse.ArgumentParser, *, default: typing.Any) -> None:
    parser.add_argument(
        "--log-level", dest="log_level", default=default, type=str.upper, choices=LOG_LEVELS,
        help="logging level [default: INFO for serve, WARNING for demo]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="logit-service", description="Exact old log-probs by policy version.")
    parser.add_argument("--version", action="version", version=f"logit-service {__version__}")
    _add_log_level(parser, default=None)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a scoring replica",
        usage="logit-service serve --snapshot-dir DIR [options]   (--help lists them by group)",
        description="Run a scoring replica. Every option is also an environment variable LOGIT_SERVICE_<OPTION>; "
        "options win over the environment.",
    )
    demo = sub.add_parser("demo", help="run the end-to-end asynchronous-RL demo on a tiny model")
    # Accepted after the subcommand too (`serve --log-level DEBUG`), where people put it. SUPPRESS keeps
    # the subcommand from overwriting a level given before it with its own default.
    for subparser in (serve, demo):
        _add_log_level(subparser, default=argparse.SUPPRESS)
    _add_config_flags(serve)
    serve.set_defaults(subparser=serve)  # its own usage line on a bad setting
    demo.add_argument("--versions", type=int, default=8, help="trainer updates to publish [default: 8]")
    demo.add_argument("--seed", type=int, default=0, help="random seed [default: 0]")
    demo.add_argument("--plot-dir", default="logit-demo", help="where the PNG plots go [default: ./logit-demo]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except ValidationError as e:
            lines = describe_validation_error(e, set(_given_flags(args)))
            args.subparser.error("invalid settings:\n  " + lines.replace("\n", "\n  "))
        except ValueError as e:  # an unknown LOGIT_SERVICE_* variable
            args.subparser.error(str(e))
        asyncio.run(_serve(config))
        return 0
    from pathlib import Path

    from logit_service.demo.run import run_demo

    return run_demo(versions=args.versions, seed=args.seed, plot_dir=Path(args.plot_dir))


if __name__ == "__main__":
    sys.exit(main())
