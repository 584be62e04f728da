"""Builds the configured scoring backend; vLLM is imported only when it is the one chosen."""

from __future__ import annotations

from typing import Any

from logit_service.config import ServerConfig


def make_backend(config: ServerConfig) -> Any:
    if config.backend == "vllm":
        from logit_service.backends.vllm_backend import VllmBackend

        return VllmBackend(dtype=config.dtype, device=config.device, max_batch_tokens=config.max_batch_tokens)
    from logit_service.backends.torch_backend import TorchBackend

    return TorchBackend(
        dtype=config.dtype,
        device=config.device,
        attn_implementation=config.attn_implementation,
        max_batch_tokens=config.max_batch_tokens,
        logprob_chunk_tokens=config.logprob_chunk_tokens,
        batch_invariant=config.batch_invariant,
        tile_tokens=config.tile_tokens,
        tile_rows=config.tile_rows,
        shrink_partial_tiles=config.shrink_partial_tiles,
    )
