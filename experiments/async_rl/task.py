"""The task: reverse a short digit string; reward = fraction of correct positions.

Layout of one trajectory (fixed length, so a batch needs no padding):

    turns=1:  BOS d1..dL SEP | r1..rL
    turns=2:  BOS d1..dL SEP | r1..rL | ENV c e1..eL SEP | s1..sL

`|` separates what the policy generates from what the prompt or the environment supplies. In the
two-turn variant the environment answers after the first turn with c (the number of correct digits,
written as a digit token) and a second string that the policy reverses next, so a trajectory's two
turns can come from different policy versions, as in agentic RL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

BOS, SEP, ENV = 10, 11, 12
VOCAB_SIZE = 16  # digits 0..9, three markers, three unused ids


@dataclass(frozen=True)
class Layout:
    """Where prompt, generated and environment tokens sit in a trajectory."""

    digits: int
    turns: int

    @property
    def prompt_len(self) -> int:
        return self.digits + 2

    @property
    def env_len(self) -> int:
        return self.digits + 3

    @property
    def length(self) -> int:
        return self.prompt_len + self.digits + (self.turns - 1) * (self.env_len + self.digits)

    def generated_positions(self) -> np.ndarray:
        first = np.arange(self.prompt_len, self.prompt_len + self.digits)
        if self.turns == 1:
            return first
        start = self.prompt_len + self.digits + self.env_len
        return np.concatenate([first, np.arange(start, start + self.digits)])

    @property
    def env_start(self) -> int:
        return self.prompt_len + self.digits


class ReversalTask:
    def __init__(self, digits: int, turns: int, alphabet: int = 10) -> None:
        self.layout = Layout(digits, turns)
        self.alphabet = alphabet

    def sample_strings(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n, turns, digits] strings over the first `alphabet` digits: one to reverse per turn."""
        return torch.randint(0, self.alphabet, (n, self.layout.turns, self.layout.digits), generator=generator)

    def start(self, strings: torch.Tensor) -> torch.Tensor:
        """[n, length] trajectories holding the prompt; the rest is filled as generation proceeds."""
        n = strings.shape[0]
        ids = torch.zeros(n, self.layout.length, dtype=torch.long)
        ids[:, 0] = BOS
        ids[:, 1 : 1 + self.layout.digits] = strings[:, 0]
        ids[:, self.layout.prompt_len - 1] = SEP
        return ids

    def fill_environment(self, ids: torch.Tensor, strings: torch.Tensor) -> None:
        """Writes the environment's answer after the first turn (in place): its score and the next string."""
        L, at = self.layout.digits, self.layout.env_start
        correct = self._correct(ids, strings, turn=0).sum(dim=1)
        ids[:, at] = ENV
        ids[:, at + 1] = correct.clamp(max=9)
        ids[:, at + 2 : at + 2 + L] = strings[:, 1]
        ids[:, at + 2 + L] = SEP

    def reward(self, ids: torch.Tensor, strings: torch.Tensor) -> torch.Tensor:
        """[n] fraction of correctly reversed digits over all turns."""
        per_turn = [self._correct(ids, strings, turn).float().mean(dim=1) for turn in range(self.layout.turns)]
        return torch.stack(per_turn, dim=1).mean(dim=1)

    def _correct(self, ids: torch.Tensor, strings: torch.Tensor, turn: int) -> torch.Tensor:
        L = self.layout.digits
        start = self.layout.prompt_len if turn == 0 else self.layout.env_start + self.layout.env_len
        return ids[:, start : start + L] == strings[:, turn].flip(dims=[1])
