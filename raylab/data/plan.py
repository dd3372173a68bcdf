"""Which videos a worker trains on, in which order: a pure function of the run's seed.

An epoch's plan is to a Ray Data pass what ``DistributedSampler(seed)`` + ``set_epoch`` is
to a PyTorch ``DataLoader``. For training, every rank draws the same permutation of the
split's row groups from ``(seed, epoch)``, lays their videos end to end, cuts that sequence
into ``world`` equal contiguous parts (wrapping around to pad the last, as
``DistributedSampler`` does, so every rank takes the same number of steps) and keeps part
``rank``; then it shuffles its part in windows of ``window`` videos, each window by its own
``(seed, epoch, rank, window)`` generator. So the clips a rank trains on in an epoch, and
their order, are a function of ``(seed, epoch, rank, world)``, and each window is read
from a few row groups: no video is read twice for a shuffle. Validation takes every video
once, in stored order, a contiguous part per rank.

The plan is also where a run stopped mid-epoch resumes: :func:`decode_units` of the plan
from a position on holds exactly the videos not yet trained, so the ones before are never
decoded. A unit is what one decode task reads: the remaining rows of one row group that
fall in one window, each tagged with its position in the plan; consumers put the decoded
rows back into plan order by that position
(:func:`raylab.data.pipeline.planned_rows`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Slot:
    """One video of a plan: row ``row`` of row group ``group`` (an index into the split's
    :func:`~raylab.data.pipeline.row_groups`)."""

    group: int
    row: int


def _parts(items: list, world: int, rank: int, pad: bool) -> list:
    """Part ``rank`` of ``world`` contiguous parts of ``items``; equal parts when ``pad``
    (wrapping round to the start), else the last parts may be shorter."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of {world} workers is not a worker")
    size = -(-len(items) // world)
    if pad and items:
        items = (items * (1 + size * world // len(items)))[: size * world]
    return items[rank * size : (rank + 1) * size]


def train_plan(
    group_rows: list[int], *, seed: int, epoch: int, rank: int = 0, world: int = 1, window: int
) -> list[Slot]:
    """The training videos rank ``rank`` of ``world`` takes in epoch ``epoch``, in order.

    ``group_rows``: the videos in each row group of the split. ``window``: videos shuffled
    together (at most the clips a worker holds decoded ahead of training; 1 keeps the row
    groups' stored order within the epoch's group order).
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(group_rows))
    videos = [Slot(int(g), r) for g in order for r in range(group_rows[g])]
    mine = _parts(videos, world, rank, pad=True)
    window = max(1, window)
    out: list[Slot] = []
    for w, start in enumerate(range(0, len(mine), window)):
        chunk = mine[start : start + window]
        perm = np.random.default_rng([seed, epoch, rank, w]).permutation(len(chunk))
        out.extend(chunk[i] for i in perm)
    return out


def eval_plan(group_rows: list[int], *, rank: int = 0, world: int = 1) -> list[Slot]:
    """The validation videos rank ``rank`` of ``world`` evaluates: every video once over all
    ranks, in stored order."""
    videos = [Slot(g, r) for g, rows in enumerate(group_rows) for r in range(rows)]
    return _parts(videos, world, rank, pad=False)


def decode_units(
    plan: list[Slot], groups: list[dict], *, start: int = 0, window: int, videos: int = 8
) -> list[dict]:
    """What decode tasks read for ``plan[start:]``: ``{"file", "row_group", "rows",
    "positions"}`` (rows in the group, and their places in the plan), each the videos of one
    row group in one window, at most ``videos`` of them, in plan order. Units are ordered
    by the first place they hold, so that ordered delivery hands the earliest clips over
    first: an epoch's first batch waits for a few small units, not for its whole window."""
    window = max(1, window)
    by_group: dict[tuple[int, int], list[int]] = {}
    for pos in range(start, len(plan)):
        by_group.setdefault((pos // window, plan[pos].group), []).append(pos)
    units = []
    for (_, group), positions in by_group.items():
        g = groups[group]
        for i in range(0, len(positions), videos):
            chunk = positions[i : i + videos]
            units.append(
                {
                    "file": g["file"],
                    "row_group": g["row_group"],
                    "rows": [plan[p].row for p in chunk],
                    "positions": chunk,
                }
            )
    return sorted(units, key=lambda u: u["positions"][0])


def batches_of(rows: Iterable[dict], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Consecutive ``size`` rows as column arrays (the last batch may be shorter)."""
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield _stack(batch)
            batch = []
    if batch:
        yield _stack(batch)


def _stack(rows: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
