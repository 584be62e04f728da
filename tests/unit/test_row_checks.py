"""Which row counts a tile may shrink to, decided by one probe per (bucket, rows), with stand-in paths
whose rows are independent of their count or not (the real model's case is in test_tiles.py)."""

from __future__ import annotations

import logging

import pytest
import torch

from logit_service.backends.row_checks import RowCountChecks

VOCAB = 50


class RecordingPath:
    """tile_hidden as a real path shapes it ([R, L] ids -> [R, L, H]); `coupled` adds the row count to
    every value, as a kernel that picks its blocking by row count would change the bits."""

    def __init__(self, *, coupled: bool) -> None:
        self.coupled = coupled
        self.tiles: list[torch.Tensor] = []

    def tile_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        self.tiles.append(ids)
        if ids.device.type == "meta":  # only where it was sent is looked at
            return torch.zeros(*ids.shape, 2)
        hidden = ids.to("cpu", torch.float32).unsqueeze(-1).repeat(1, 1, 2)
        return hidden + ids.shape[0] if self.coupled else hidden


@pytest.mark.parametrize("coupled", [False, True], ids=["independent rows", "rows depend on their count"])
def test_a_shrunk_tile_is_used_only_where_every_row_keeps_its_bits_and_the_log_says_which(coupled, caplog):
    path = RecordingPath(coupled=coupled)
    checks = RowCountChecks(path, vocab_size=VOCAB, device=torch.device("cpu"))
    with caplog.at_level(logging.INFO, logger="logit_service.backends.row_checks"):
        assert checks.holds(16, 3, 8) is (not coupled)
        assert checks.holds(16, 3, 8) is (not coupled)  # decided once: no second probe
    assert len(path.tiles) == 2 and checks.outcomes == {(16, 3): not coupled}
    (line,) = [r.getMessage() for r in caplog.records]
    if coupled:
        assert line == ("tiles of 3 rows x 16 tokens do not give the bits of the full 8-row tile: "
                        "partial tiles of this bucket keep their full rows")  # fmt: skip
    else:
        assert line == "tiles of 3 rows x 16 tokens give the bits of the full 8-row tile"


def test_a_full_tile_needs_no_probe():
    path = RecordingPath(coupled=True)
    assert RowCountChecks(path, vocab_size=VOCAB, device=torch.device("cpu")).holds(16, 8, 8) is True
    assert path.tiles == []


def test_the_probe_is_the_same_on_every_run_and_forwarded_on_the_backends_device():
    """A decision is reproducible across runs and replicas: the probe tile is drawn from the whole
    vocabulary by a generator seeded from the shape alone, and its first rows are the shrunk tile."""
    paths = [RecordingPath(coupled=False) for _ in range(2)]
    for path in paths:
        torch.manual_seed(len(path.tiles) + id(path) % 1000)  # the global generator plays no part
        RowCountChecks(path, vocab_size=VOCAB, device=torch.device("cpu")).holds(16, 3, 8)
    expected = torch.randint(0, VOCAB, (8, 16), generator=torch.Generator().manual_seed(16 * 64 + 3))
    for path in paths:
        full, shrunk = path.tiles
        assert torch.equal(full, expected) and torch.equal(shrunk, expected[:3])

    on_meta = RecordingPath(coupled=False)
    RowCountChecks(on_meta, vocab_size=VOCAB, device=torch.device("meta")).holds(16, 3, 8)
    assert [t.device.type for t in on_meta.tiles] == ["meta", "meta"]


def test_the_probe_tile_is_drawn_on_the_host_whatever_the_calling_threads_default_device():
    # A trainer may call torch.set_default_device("cuda") on the thread that drives the backend; "meta" (a
    # device without data) stands in for it. The probe tile is drawn on the host and sent to the
    # backend's device, so it holds the same tokens as on a thread with no default device.
    plain, elsewhere = RecordingPath(coupled=False), RecordingPath(coupled=False)
    RowCountChecks(plain, vocab_size=VOCAB, device=torch.device("cpu")).holds(16, 3, 8)
    with torch.device("meta"):
        assert RowCountChecks(elsewhere, vocab_size=VOCAB, device=torch.device("cpu")).holds(16, 3, 8) is True
    assert [t.device.type for t in elsewhere.tiles] == ["cpu", "cpu"]
    assert all(torch.equal(a, b) for a, b in zip(plain.tiles, elsewhere.tiles))
