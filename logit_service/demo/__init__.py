"""The end-to-end demo: a real trainer, lagging rollouts with partial rollouts, exact old log-probs."""
