"""Fixed-shape tiles: how sequences from any number of requests share forwards without their answers
depending on what they were batched with.

A sequence's answer must be bit-identical whether it is scored alone or beside other callers' sequences.
The numbers a forward produces for a row depend on the forward's shape (kernels choose their blocking and
reduction order by shape), never on the values in the other rows. So every forward has one of a few
fixed shapes: a sequence is padded on the right to its length bucket, and a tile always holds the same
number of rows for that bucket, with dummy rows (token 0) where fewer sequences are waiting. A sequence
alone goes through the very shape it would go through beside others.

Right padding with causal attention leaves every real position's inputs unchanged: a position attends
only to itself and earlier ones, and its position id is its index, as unpadded. No attention mask is
passed: transformers may drop an all-ones mask and take another kernel, so whether a tile happened to be
full would otherwise choose the kernel.

A tile that fewer sequences fill than its rows may run with fewer rows (`fewest_rows`: a power of two,
so few shapes exist), but only once that row count was shown to give every row the very bits of the
full tile, for that bucket (row_checks.py); a lone short sequence then pays for one row, not eight.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_BUCKET = 16


def bucket_length(n: int) -> int:
    """n rounded up to one of four steps per power of two (at most 25% padding above 64 tokens), and to
    a multiple of 16, so a sequence's rows start on the same boundary in every tile."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    step = max(MIN_BUCKET, 1 << (n.bit_length() - 3))
    return -(-n // step) * step


def rows_per_tile(bucket: int, *, tile_tokens: int, max_rows: int) -> int:
    """Rows of every tile of this bucket: fixed by the bucket alone, never by how many are waiting."""
    return max(1, min(max_rows, tile_tokens // bucket))


def fewest_rows(members: int, rows: int) -> int:
    """The smallest power of two that holds `members`, if below the bucket's `rows`; else `rows`."""
    shrunk = 1 << max(members - 1, 0).bit_length()
    return shrunk if shrunk < rows else rows


@dataclass(frozen=True)
class Tile:
    length: int  # the bucket: columns of every row
    rows: int  # fixed for the bucket; members fill the first len(members) rows, dummies the rest
    members: tuple[int, ...]  # item indices, in row order


def tiles_have_room(lengths: list[int], *, tile_tokens: int, max_rows: int) -> bool:
    """Whether the tiles these lengths need leave a row free: only then can another caller's sequence
    share their forwards instead of needing forwards of its own."""
    return any(len(t.members) < t.rows for t in plan_tiles(lengths, tile_tokens=tile_tokens, max_rows=max_rows))


def plan_tiles(lengths: list[int], *, tile_tokens: int, max_rows: int) -> list[Tile]:
    """Items grouped by bucket (longest bucket first), cut into tiles of the bucket's fixed row count."""
    by_bucket: dict[int, list[int]] = {}
    for index, n in enumerate(lengths):
        by_bucket.setdefault(bucket_length(n), []).append(index)
    tiles = []
    for bucket in sorted(by_bucket, reverse=True):
        rows = rows_per_tile(bucket, tile_tokens=tile_tokens, max_rows=max_rows)
        members = by_bucket[bucket]
        for start in range(0, len(members), rows):
            tiles.append(Tile(bucket, rows, tuple(members[start : start + rows])))
    return tiles
