"""Adapters between trainers' batch layouts and the client: TRL's GRPO trainer, verl's DataProto, AReaL's batches.

Each framework is imported only inside its own module (`trl_grpo` imports TRL and transformers; `verl` and
`areal` import nothing of theirs: they read the tensors those frameworks build), so importing this package
costs nothing. The recipes are in docs/integrations.md.
"""
