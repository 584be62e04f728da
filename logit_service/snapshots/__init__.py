"""Snapshot storage: on-disk format, atomic writing, verified loading, cache and retention."""
