"""The `logit-service` command: `serve` runs a replica, `demo` runs the end-to-end demonstration.

Every ServerConfig field is a flag of `serve` and an environment variable; flags win.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import typing

from pydantic import ValidationError

from logit_service import __version__
from logit_service.config import ENV_PREFIX, ServerConfig, env_overrides


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in ServerConfig.model_fields.items():
        default = "required" if field.is_required() else f"default: {field.default}"
        help_text = f"{field.description or ''} [{default}; env {ENV_PREFIX}{name.upper()}]"
        if typing.get_origin(field.annotation) is None and field.annotation is bool:
            parser.add_argument(_flag(name), dest=name, default=None, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(_flag(name), dest=name, default=None, metavar=name.upper(), help=help_text)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    values = env_overrides()
    values.update({k: v for k, v in vars(args).items() if k in ServerConfig.model_fields and v is not None})
    return ServerConfig(**values)


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logit-service", description="Exact old log-probs by policy version.")
    parser.add_argument("--version", action="version", version=f"logit-service {__version__}")
    log_level = dict(default=None, help="logging level [default: INFO for serve, WARNING for demo]")
    parser.add_argument("--log-level", **log_level)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run a scoring replica")
    # Accepted after the subcommand too (`serve --log-level DEBUG`), where people put it.
    serve.add_argument("--log-level", dest="serve_log_level", **log_level)
    _add_config_flags(serve)
    demo = sub.add_parser("demo", help="run the end-to-end asynchronous-RL demo on a tiny model")
    demo.add_argument("--versions", type=int, default=8, help="trainer updates to publish")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)
    level = getattr(args, "serve_log_level", None) or args.log_level or ("INFO" if args.command == "serve" else "WARNING")
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            config = config_from_args(args)
        except (ValidationError, ValueError) as e:
            parser.error(str(e))
        asyncio.run(_serve(config))
        return 0
    from logit_service.demo.run import run_demo

    return run_demo(versions=args.versions, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())
