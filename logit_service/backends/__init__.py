"""Scoring backends: run a model forward and return log-probs of given tokens."""
