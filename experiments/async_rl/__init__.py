"""Asynchronous RL through the old-logit service: learning curves per choice of old log-probs and each
exact strategy's system cost, on a tiny digit-reversal task that a CPU learns in about a minute.

`python -m experiments.async_rl run|grid|report --help`; results and their reading are in experiments/README.md.
"""
