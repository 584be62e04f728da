"""Experiments on top of the service and its client: they use both, and nothing imports them."""
