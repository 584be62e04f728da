"""Which row counts a tile may shrink to: a bucket's tile run with fewer rows than its fixed count is
used only where that shape gives every row the very bits the full tile gives it.

Kernels choose blocking, vectorisation tails and thread splits by shape, so a row's numbers may change
with the number of rows beside it even when they never change with the rows' values (tiles.py). On
some devices they do not (this project's CPU runs found none), on others split-K or tile heuristics
chosen by row count make them differ. So nothing is assumed: the first time a bucket's tile would run
with fewer rows, one tile of random tokens is forwarded at both row counts, and the shape is used from
then on only if the hidden states of every row, at every position, are bit-identical. Random tokens
fill every row, so a row-count effect confined to the last rows (a kernel's tail) is seen too.

The outcome depends on the shapes, the dtype, the device and the thread count, never on the weights
(the tile probe already refused models whose rows interact through their values), so it is kept for
the life of the backend.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class RowCountChecks:
    def __init__(self, path, *, vocab_size: int, device: torch.device) -> None:
        self.path = path  # has tile_hidden(ids [R, L]) -> [R, L, H]
        self.vocab_size = vocab_size
        self.device = device
        self.outcomes: dict[tuple[int, int], bool] = {}  # (bucket, rows) -> same bits as the full tile

    def holds(self, bucket: int, rows: int, full_rows: int) -> bool:
        """Whether a tile of `rows` x `bucket` gives every row the bits of the `full_rows` x `bucket` tile;
        checked (two forwards) the first time it is asked."""
        if rows == full_rows:
            return True
        key = (bucket, rows)
        if key not in self.outcomes:
            self.outcomes[key] = self._check(bucket, rows, full_rows)
            log.info(
                "tiles of %d rows x %d tokens %s the bits of the full %d-row tile%s",
                rows, bucket, "give" if self.outcomes[key] else "do not give", full_rows,
                "" if self.outcomes[key] else ": partial tiles of this bucket keep their full rows",
            )  # fmt: skip
        return self.outcomes[key]

    def _check(self, bucket: int, rows: int, full_rows: int) -> bool:
        generator = torch.Generator().manual_seed(bucket * 64 + rows)  # the same probe on every run
        tile = torch.randint(0, self.vocab_size, (full_rows, bucket), generator=generator, device="cpu")
        full = self.path.tile_hidden(tile.to(self.device))[:rows]
        shrunk = self.path.tile_hidden(tile[:rows].contiguous().to(self.device))
        return bool(torch.equal(full, shrunk))
