"""Prints architecture → log-prob path the probe chose → max |served − direct forward| for every causal
LM transformers lists, built tiny on the CPU (the matrix of tests/integration/test_architectures.py).

    PYTHONPATH=.:clients python scripts/architecture_table.py [model_type ...]
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tiny_architectures import causal_lm_architectures, measure, tiny_architecture  # noqa: E402


def main(only: list[str]) -> int:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    rows = []
    print(f"| {'architecture':26s} | {'path':15s} | max abs error | note |")
    print(f"| {'-' * 26} | {'-' * 15} | ------------- | ---- |")
    for model_type, class_name in causal_lm_architectures():
        if only and model_type not in only:
            continue
        m = measure(tiny_architecture(model_type, class_name))
        rows.append(m)
        error = "" if m.max_error is None else f"{m.max_error:.2e}"
        note = m.note.replace("\n", " ").replace("|", "/")[:110]
        print(f"| {m.model_type:26s} | {m.path:15s} | {error:13s} | {note} |", flush=True)
    served = [m for m in rows if m.max_error is not None]
    by_path: dict[str, int] = {}
    for m in rows:
        by_path[m.path] = by_path.get(m.path, 0) + 1
    worst = max((m.max_error for m in served), default=float("nan"))
    print(f"\n{len(rows)} architectures: {by_path}; worst served error {worst:.2e} nats")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
