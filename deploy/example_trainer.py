"""A trainer-side example against running replicas: train a tiny model, publish every version, score a
partial rollout whose response spans several versions, and check the answers.

It owns nothing the service needs; it shows the calls a trainer makes. Settings come from the environment:

    LOGIT_TARGETS       replicas, comma-separated host:port (default 127.0.0.1:50051)
    LOGIT_SNAPSHOT_DIR  the directory the replicas serve, as this process sees it (required)
    LOGIT_VERSIONS      optimiser steps to publish (default 4)
    LOGIT_SEED          seed of the model, the training data and the rollout (default 0)
    LOGIT_WAIT_S        how long to wait for every replica to report SERVING (default 120)
    LOGIT_REDIS_URL     optional: list the replicas' leases in the shared registry at the end
    LOGIT_REDIS_NAMESPACE  registry key prefix, as the replicas' --redis-namespace (default logit)

Locally, beside `logit-service serve --port 50051 --snapshot-dir /tmp/snapshots`:

    LOGIT_TARGETS=127.0.0.1:50051 LOGIT_SNAPSHOT_DIR=/tmp/snapshots python -m deploy.example_trainer

Exits 0 when every scored token came back EXACT, matches a direct forward with that version's weights,
and every replica gave the same answer; 1 otherwise.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from logit_client import LogitClient, SequenceInput, TokenSource
from logit_service.demo.tiny_model import build_tiny_model, reference_logprobs, sgd_step
from logit_service.v1 import logit_service_pb2 as pb

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LogitService"].full_name
VOCAB = 512
PROMPT_LEN = 8
TOKENS_PER_VERSION = 5
TOLERANCE = 1e-5
"""Largest |served − direct forward| accepted: fp32 on CPU stays near 1e-6."""
REPLICA_TOLERANCE = 1e-5
"""Largest disagreement accepted between replicas (bit-identical on one machine; CPUs may differ)."""


@dataclass(frozen=True)
class TrainerSettings:
    targets: tuple[str, ...]
    snapshot_dir: Path
    versions: int = 4
    seed: int = 0
    wait_s: float = 120.0
    redis_url: str | None = None
    redis_namespace: str = "logit"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TrainerSettings:
        env = os.environ if environ is None else environ
        targets = tuple(t.strip() for t in env.get("LOGIT_TARGETS", "127.0.0.1:50051").split(",") if t.strip())
        if not targets:
            raise ValueError("LOGIT_TARGETS names no replica; give host:port[,host:port...]")
        snapshot_dir = env.get("LOGIT_SNAPSHOT_DIR", "")
        if not snapshot_dir:
            raise ValueError("LOGIT_SNAPSHOT_DIR is required: the directory the replicas serve, as seen from here")
        versions = int(env.get("LOGIT_VERSIONS", "4"))
        if versions < 2:
            raise ValueError(f"LOGIT_VERSIONS must be >= 2 for a rollout to span versions, got {versions}")
        return cls(
            targets=targets,
            snapshot_dir=Path(snapshot_dir),
            versions=versions,
            seed=int(env.get("LOGIT_SEED", "0")),
            wait_s=float(env.get("LOGIT_WAIT_S", "120")),
            redis_url=env.get("LOGIT_REDIS_URL") or None,
            redis_namespace=env.get("LOGIT_REDIS_NAMESPACE", "logit"),
        )


def wait_until_serving(client: LogitClient, targets: tuple[str, ...], wait_s: float) -> None:
    """Blocks until every target reports SERVING for the scoring service, or raises TimeoutError."""
    deadline = time.monotonic() + wait_s
    for target in targets:
        while not client.health(SERVICE_NAME, target=target, timeout_s=2.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica {target} did not report SERVING within {wait_s:.0f} s")
            time.sleep(0.5)  # between polls of a real health check


def weights_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


@torch.no_grad()
def sample(model: torch.nn.Module, token_ids: list[int], n: int, generator: torch.Generator) -> list[int]:
    """n tokens sampled from the model after token_ids (what a rollout engine holding these weights emits)."""
    out = list(token_ids)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([out]), use_cache=False).logits[0, -1].float()
        out.append(int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)))
    return out[len(token_ids) :]


def partial_rollout(
    rollout_model: torch.nn.Module,
    snapshots: dict[int, dict[str, torch.Tensor]],
    versions: list[int],
    generator: torch.Generator,
) -> tuple[list[int], list[int]]:
    """One response generated across weight updates: TOKENS_PER_VERSION tokens under each version in turn.

    Returns (token_ids, per-token version tags), prompt tokens tagged -1.
    """
    token_ids = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=generator).tolist()
    tags = [-1] * PROMPT_LEN
    for version in versions:  # the engine picks up newer weights mid-response
        rollout_model.load_state_dict(snapshots[version])
        token_ids += sample(rollout_model, token_ids, TOKENS_PER_VERSION, generator)
        tags += [version] * TOKENS_PER_VERSION
    return token_ids, tags


def direct_logprobs(
    reference_model: torch.nn.Module,
    snapshots: dict[int, dict[str, torch.Tensor]],
    token_ids: list[int],
    tags: list[int],
) -> np.ndarray:
    """Per position, the log-prob under the weights of the version that generated it (NaN on the prompt)."""
    out = np.full(len(token_ids), np.nan, dtype=np.float64)
    tag_array = np.asarray(tags)
    for version in sorted({t for t in tags if t >= 0}):
        reference_model.load_state_dict(snapshots[version])
        where = tag_array == version
        out[where] = reference_logprobs(reference_model, token_ids).numpy()[where]
    return out


def print_token_table(token_ids: list[int], tags: list[int], scores, expected: np.ndarray) -> None:
    print(f"{'pos':>4} {'token':>6} {'tagged':>7} {'served':>7} {'source':>11} {'logprob':>11} {'|err|':>9}")
    for t in range(len(token_ids)):
        if tags[t] < 0:
            continue
        source = TokenSource(int(scores.sources[t])).name
        served = int(scores.served_versions[t])
        err = abs(float(scores.logprobs[t]) - expected[t])
        print(f"{t:>4} {token_ids[t]:>6} {tags[t]:>7} {served:>7} {source:>11} {scores.logprobs[t]:>11.6f} {err:>9.2e}")


def list_leases(redis_url: str, namespace: str) -> None:
    """The replicas' leases in the shared registry: who is alive and which versions each holds in RAM."""
    from logit_service.registry.redis import RedisRegistry

    registry = RedisRegistry(redis_url, namespace=namespace)
    try:
        for replica in registry.replicas():
            print(f"  lease {replica.replica_id}: resident versions {list(replica.resident_versions)}")
    finally:
        registry.close()


def run(settings: TrainerSettings) -> int:
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    client = LogitClient(list(settings.targets), timeout_s=60)
    replicas = {target: LogitClient(target, timeout_s=60) for target in settings.targets}
    try:
        wait_until_serving(client, settings.targets, settings.wait_s)
        latest = client.list_versions().latest_version
        # Number after whatever is already there, so a rerun against the same replicas publishes new versions.
        first = 0 if latest is None else latest + 1
        last = first + settings.versions - 1
        print(f"replicas {', '.join(settings.targets)} serving; publishing versions {first}..{last}")

        # Every version goes through one replica: the replica that registers a version is the one that folds
        # it into the EWMA pseudo-version, so spreading publishes would split that average between replicas.
        publisher = replicas[settings.targets[0]]
        model = build_tiny_model(seed=settings.seed, vocab_size=VOCAB)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        snapshots: dict[int, dict[str, torch.Tensor]] = {}
        for step in range(settings.versions):
            version = first + step
            if step > 0:
                batch = torch.randint(0, VOCAB // 4, (4, 32), generator=generator)  # a skewed toy corpus
                loss = sgd_step(model, optimizer, batch)
            else:
                loss = float("nan")
            snapshots[version] = weights_of(model)
            published = publisher.publish(version, model, settings.snapshot_dir)
            print(f"  v{version}: loss {loss:.4f}  digest {published.digest[:12]}  at {published.snapshot_path}")

        rollout_model = build_tiny_model(vocab_size=VOCAB)
        reference_model = build_tiny_model(vocab_size=VOCAB)
        # The newest versions, oldest first: the rollout started under an older policy and resumed under newer ones.
        span_versions = sorted(snapshots)[-min(3, settings.versions) :]
        token_ids, tags = partial_rollout(rollout_model, snapshots, span_versions, generator)
        batch = [SequenceInput.from_versions(token_ids, tags, sample_id="partial-rollout")]
        expected = direct_logprobs(reference_model, snapshots, token_ids, tags)

        answers = {}
        for target, replica in replicas.items():
            answers[target] = replica.score(batch, allow_ewma_fallback=True)[0]
        first_target = settings.targets[0]
        scores = answers[first_target]
        print(f"\npartial rollout over versions {span_versions}, scored by {first_target}:")
        print_token_table(token_ids, tags, scores, expected)

        scored = np.asarray(tags) >= 0
        all_exact = bool((scores.sources[scored] == TokenSource.EXACT).all())
        max_error = float(np.nanmax(np.abs(scores.logprobs[scored] - expected[scored])))
        replica_gap = max(float(np.abs(a.logprobs[scored] - scores.logprobs[scored]).max()) for a in answers.values())
        identical = all(np.array_equal(a.logprobs[scored], scores.logprobs[scored]) for a in answers.values())
        print(f"\nexact on every token: {all_exact}; max |served - direct forward| = {max_error:.2e}")
        print(f"replicas agree: max gap {replica_gap:.2e} ({'bit-identical' if identical else 'not bit-identical'})")

        # The client alone spreads calls over replicas and retries on the next one when that can help.
        spread = client.score(batch, allow_ewma_fallback=True)[0]
        spread_gap = float(np.abs(spread.logprobs[scored] - scores.logprobs[scored]).max())
        if settings.redis_url:
            print("shared registry:")
            list_leases(settings.redis_url, settings.redis_namespace)

        ok = all_exact and max_error <= TOLERANCE and replica_gap <= REPLICA_TOLERANCE
        ok = ok and spread_gap <= REPLICA_TOLERANCE
        print("OK" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        client.close()
        for replica in replicas.values():
            replica.close()


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        settings = TrainerSettings.from_env(environ)
    except ValueError as e:
        print(f"example_trainer: {e}", file=sys.stderr)
        return 2
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
