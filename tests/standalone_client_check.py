"""Publishes and scores through the client alone: run as a script, in a process where the server package
cannot be imported (`--block logit_service`, or an environment with only the client distribution).

It imports nothing from the tests or the server, only the client and what it depends on, and reports
what it saw as JSON for the test that started it to check:

    python tests/standalone_client_check.py ADDRESS SNAPSHOT_DIR WEIGHTS CONFIG TOKENS OUT [--block NAME ...]

WEIGHTS is a safetensors file of a state dict, CONFIG its model config (JSON), TOKENS a JSON list of ids.
With `--extras-missing`, it checks instead that each optional part names its extra when its package is
blocked (and that the base client imports without torch).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import json
import pkgutil
import sys


class Blocker(importlib.abc.MetaPathFinder):
    """Refuses to import the named top-level packages, as if they were not installed."""

    def __init__(self, names: list[str]) -> None:
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (blocked)", name=fullname)
        return None


def _import_everything(package_name: str, skip: tuple[str, ...] = ()) -> list[str]:
    package = importlib.import_module(package_name)
    names = [package_name]
    for info in pkgutil.walk_packages(package.__path__, package_name + "."):
        if not info.name.startswith(skip):
            importlib.import_module(info.name)
            names.append(info.name)
    return names


def _expect_extra(call, extra: str) -> str:
    try:
        call()
    except ModuleNotFoundError as e:
        assert f"pip install 'logit-client[{extra}]'" in str(e), str(e)
        return str(e)
    raise AssertionError(f"expected an error naming the {extra!r} extra")


def check_extras_missing(out: str, snapshot_dir: str) -> None:
    import logit_client  # the base install: grpc, protobuf, numpy; no torch, safetensors or redis

    assert not {"torch", "safetensors", "redis"} & set(sys.modules), sorted(m for m in sys.modules if m in ("torch", "safetensors", "redis"))
    from logit_client import ReplicaRouter

    messages = {
        "routing": _expect_extra(lambda: ReplicaRouter.from_redis("redis://127.0.0.1:1/0"), "routing"),
        "publish": _expect_extra(lambda: logit_client.publish(None, 0, {}, snapshot_dir, model_config={}), "publish"),
        "loss": _expect_extra(lambda: importlib.import_module("logit_client.loss"), "publish"),
        "ewma": _expect_extra(lambda: importlib.import_module("logit_client.ewma"), "publish"),
    }
    with open(out, "w") as f:
        json.dump({"messages": messages, "server_modules": sorted(m for m in sys.modules if m.startswith("logit_service"))}, f)


def check_publish_and_score(args) -> None:
    import torch
    from safetensors.torch import load_file

    import logit_client
    from logit_client import LogitClient, SequenceInput

    # Every module of the client and of the shared layer imports (vllm_rollout needs vLLM only when used),
    # except the TRL trainer, which subclasses TRL's and so needs it installed (the `trl` extra).
    modules = _import_everything("logit_client", skip=("logit_client.integrations.trl_grpo",))
    modules += _import_everything("logit_common")
    state_dict = load_file(args.weights)
    with open(args.config) as f:
        config = json.load(f)
    with open(args.tokens) as f:
        tokens = json.load(f)
    with LogitClient(args.address, timeout_s=120) as client:
        published = client.publish(0, state_dict, args.snapshot_dir, model_config=config)
        scores = client.score([SequenceInput(torch.tensor(tokens).numpy(), spans=((0, 1, len(tokens)),))]).sequences[0]
        versions = client.list_versions()
    with open(args.out, "w") as f:
        json.dump(
            {
                "version": logit_client.__version__,
                "digest": published.digest,
                "latest_version": versions.latest_version,
                "logprobs": [float(x) for x in scores.logprobs[1:]],
                "modules": modules,
                "client_file": logit_client.__file__,
                "server_modules": sorted(m for m in sys.modules if m.startswith("logit_service")),
            },
            f,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("snapshot_dir")
    parser.add_argument("weights")
    parser.add_argument("config")
    parser.add_argument("tokens")
    parser.add_argument("out")
    parser.add_argument("--block", action="append", default=[])
    parser.add_argument("--extras-missing", action="store_true")
    args = parser.parse_args()
    if args.block:
        sys.meta_path.insert(0, Blocker(args.block))
        for name in args.block:  # the block holds: the server is not importable in this process
            try:
                importlib.import_module(name)
            except ModuleNotFoundError:
                continue
            raise AssertionError(f"{name} could still be imported")
    if args.extras_missing:
        check_extras_missing(args.out, args.snapshot_dir)
    else:
        check_publish_and_score(args)


if __name__ == "__main__":
    main()
