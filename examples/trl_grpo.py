"""TRL's GRPO trainer training through the old-logit service: every version published, every old log-prob served.

A tiny random-weight Qwen2 built from a config and a character-level tokenizer built here (nothing is
downloaded) learn a toy reward: completions of high digits. Generation runs ahead of the optimiser
(`steps_per_generation=2`, `num_iterations=2`: each round of completions is trained over four optimiser
steps), so the old log-probs of a round are those of the version that generated it, three versions
behind by the last step, and they come from the service.

    python examples/trl_grpo.py                      # starts a service in this process
    python examples/trl_grpo.py --address 127.0.0.1:50051 --snapshot-dir /shared/snapshots
    python examples/trl_grpo.py --rollout-lag 4      # sampling weights lag the trainer, switching mid-completion
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB_CHARS = list("0123456789 abcdefghijklmnopqrstuvwxyz+=")
SPECIAL_TOKENS = ["<pad>", "<eos>"]


def build_tokenizer():
    """A character-level `PreTrainedTokenizerFast`, built from `tokenizers` without any file or download."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + VOCAB_CHARS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # characters join back without separators
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def build_model(tokenizer, seed: int = 0):
    """A tiny random-weight Qwen2 whose vocabulary is the tokenizer's."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def high_digits_reward(completions: list[str], **kwargs: Any) -> list[float]:
    """The toy task: the mean of a completion's characters read as digits, scaled to [0, 1] (others count 0).

    Dense on purpose: almost every group of completions differs in reward, so every step moves the weights."""
    return [sum(int(c) for c in completion if c.isdigit()) / (9 * max(len(completion), 1)) for completion in completions]


class LaggingRollout:
    """A `rollout_func` standing in for an asynchronous inference engine whose weights lag the trainer's.

    It samples with its own copy of the model and takes the trainer's weights only halfway through a
    round, and only once they are `refresh_every` versions ahead: the first half of those completions
    comes from an old version, the rest from the new one, and each token says which (`policy_versions`).
    The trainer then holds neither of the weights that generated the first half; the service does.
    """

    def __init__(self, refresh_every: int, max_tokens: int = 8, seed: int = 0) -> None:
        import torch

        self.refresh_every = refresh_every
        self.max_tokens = max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.engine = None
        self.engine_version = 0

    def _refresh(self, trainer) -> None:
        import copy

        # The trainer's weights now are version `global_step`, the one its callback last published.
        self.engine = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model)).eval()
        self.engine_version = trainer.state.global_step

    def __call__(self, prompts: list[str], trainer) -> dict[str, list]:
        import torch

        if self.engine is None:
            self._refresh(trainer)
        tokenizer = trainer.processing_class
        rows = [tokenizer(prompt)["input_ids"] for prompt in prompts]
        completions: list[list[int]] = [[] for _ in rows]
        logprobs: list[list[float]] = [[] for _ in rows]
        versions: list[list[int]] = [[] for _ in rows]
        active = set(range(len(rows)))
        for step in range(self.max_tokens):
            if step == self.max_tokens // 2 and trainer.state.global_step - self.engine_version >= self.refresh_every:
                self._refresh(trainer)  # weights change mid-generation, as in a partial rollout
            for row in sorted(active):
                ids = torch.tensor([rows[row] + completions[row]])
                with torch.no_grad():
                    logits = self.engine(input_ids=ids, use_cache=False).logits[0, -1].float() / trainer.temperature
                log_softmax = torch.log_softmax(logits, dim=-1)
                token = int(torch.multinomial(log_softmax.exp(), 1, generator=self.generator))
                completions[row].append(token)
                logprobs[row].append(float(log_softmax[token]))
                versions[row].append(self.engine_version)
                if token == tokenizer.eos_token_id:
                    active.discard(row)
        return {"prompt_ids": rows, "completion_ids": completions, "logprobs": logprobs,
                "policy_versions": versions}  # fmt: skip


def prompt_dataset(n_prompts: int, seed: int = 0):
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    return Dataset.from_dict({"prompt": [" ".join(rng.choice("0123456789") for _ in range(4)) for _ in range(n_prompts)]})


def make_trainer(
    client,
    snapshot_dir: Path,
    output_dir: Path,
    *,
    max_steps: int = 8,
    seed: int = 0,
    rollout_lag: int | None = None,
    trainer_class: Callable[..., Any] | None = None,
):
    """A ServiceGRPOTrainer on the toy task; `trainer_class` lets a caller substitute a subclass.

    With `rollout_lag`, completions come from a `LaggingRollout` that takes new weights only once they are
    that many versions ahead, switching halfway through a completion.
    """
    from trl import GRPOConfig

    from logit_client.integrations.trl_grpo import ServiceGRPOTrainer

    tokenizer = build_tokenizer()
    args = GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        num_generations=4,
        steps_per_generation=2,  # one generation round feeds 2 optimiser steps ...
        num_iterations=2,  # ... twice: 4 versions train on completions of one
        gradient_accumulation_steps=1,
        max_completion_length=8,
        max_steps=max_steps,
        learning_rate=3e-3,
        beta=0.0,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    cls = trainer_class or ServiceGRPOTrainer
    return cls(
        model=build_model(tokenizer, seed),
        reward_funcs=high_digits_reward,
        args=args,
        train_dataset=prompt_dataset(64, seed),
        processing_class=tokenizer,
        rollout_func=LaggingRollout(rollout_lag, max_tokens=8, seed=seed) if rollout_lag else None,
        logit_client=client,
        snapshot_dir=snapshot_dir,
        score_timeout_s=60,
        publish_timeout_s=60,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="a running service; without it one is started in this process")
    parser.add_argument("--snapshot-dir", type=Path, help="the service's snapshot directory (required with --address)")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--rollout-lag", type=int, help="sample with weights this many versions old (LaggingRollout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from logit_client import LogitClient

    with tempfile.TemporaryDirectory(prefix="trl-grpo-") as tmp:
        server = None
        if args.address is None:
            from logit_service.config import ServerConfig
            from logit_service.server.app import ServerThread

            snapshot_dir = Path(tmp) / "snapshots"
            server = ServerThread(ServerConfig(host="127.0.0.1", port=0, snapshot_dir=snapshot_dir)).start()
            address = server.address
            print(f"started a service on {address}, snapshots in {snapshot_dir}", flush=True)
        elif args.snapshot_dir is None:
            parser.error("--snapshot-dir is required with --address")
        else:
            address, snapshot_dir = args.address, args.snapshot_dir
        try:
            with LogitClient(address, timeout_s=60) as client:
                trainer = make_trainer(
                    client, snapshot_dir, Path(tmp) / "out", max_steps=args.max_steps, rollout_lag=args.rollout_lag
                )
                trainer.train()
                versions = sorted(v.policy_version for v in client.list_versions().versions)
                print(f"published versions: {versions}")
                for entry in trainer.state.log_history:
                    if "reward" in entry:
                        print(
                            f"step {entry['step']}: reward {entry['reward']:.3f}, "
                            f"staleness mean {entry.get('logit_service/staleness_mean', float('nan')):.2f}"
                        )
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
