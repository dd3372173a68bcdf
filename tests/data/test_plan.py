"""The epoch plan: which videos a rank trains on, in which order, as a function of the seed."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from raylab.data.pipeline import planned_rows
from raylab.data.plan import Slot, batches_of, decode_units, eval_plan, train_plan

ROWS = [16, 16, 16, 16, 16, 7]  # videos per row group: the last one short, as ingest leaves it


def test_a_plan_is_a_function_of_seed_epoch_rank_and_workers():
    plan = train_plan(ROWS, seed=3, epoch=2, rank=1, world=2, window=8)
    assert plan == train_plan(ROWS, seed=3, epoch=2, rank=1, world=2, window=8)
    assert plan != train_plan(ROWS, seed=4, epoch=2, rank=1, world=2, window=8)
    assert plan != train_plan(ROWS, seed=3, epoch=3, rank=1, world=2, window=8)
    assert plan != train_plan(ROWS, seed=3, epoch=2, rank=0, world=2, window=8)


def test_ranks_split_every_video_into_equal_parts_like_distributed_sampler():
    everyone = {Slot(g, r) for g, rows in enumerate(ROWS) for r in range(rows)}
    for world in (1, 2, 3, 4):
        parts = [
            train_plan(ROWS, seed=0, epoch=1, rank=k, world=world, window=16) for k in range(world)
        ]
        assert len({len(p) for p in parts}) == 1  # every rank takes the same number of steps
        taken = Counter(s for p in parts for s in p)
        assert set(taken) == everyone
        # Padding repeats fewer videos than there are workers, and only once each.
        assert sum(taken.values()) - len(everyone) < world
        assert max(taken.values()) <= 2


def test_windows_shuffle_the_videos_of_a_few_row_groups():
    plan = train_plan(ROWS, seed=0, epoch=0, window=16)
    for start in range(0, len(plan), 16):
        groups = {s.group for s in plan[start : start + 16]}
        assert len(groups) <= 2  # a window of 16 reads at most two groups
    # A window of one keeps each row group's stored order within the epoch's group order.
    plain = train_plan(ROWS, seed=0, epoch=0, window=1)
    assert [s.row for s in plain[:16]] == list(range(16))
    # The epoch reorders row groups and mixes videos within windows.
    assert [s.group for s in plain[::16]] != sorted(s.group for s in plain[::16])
    assert plan[:16] != plain[:16]


def test_validation_takes_every_video_once_in_stored_order():
    parts = [eval_plan(ROWS, rank=k, world=3) for k in range(3)]
    flat = [s for p in parts for s in p]
    assert flat == [Slot(g, r) for g, rows in enumerate(ROWS) for r in range(rows)]


def test_decode_units_of_a_resumed_plan_hold_exactly_the_rest():
    groups = [{"file": f"part-{g}", "row_group": 0, "rows": n} for g, n in enumerate(ROWS)]
    plan = train_plan(ROWS, seed=5, epoch=0, window=16)
    for start in (0, 1, 17, len(plan) - 1, len(plan)):
        units = decode_units(plan, groups, start=start, window=16)
        positions = [p for u in units for p in u["positions"]]
        assert sorted(positions) == list(range(start, len(plan)))  # none twice, none skipped
        for u in units:
            g = int(u["file"].split("-")[1])
            assert [plan[p] for p in u["positions"]] == [Slot(g, r) for r in u["rows"]]
        firsts = [u["positions"][0] for u in units]
        assert firsts == sorted(firsts)  # ordered delivery hands the earliest clips first


def test_rows_come_back_in_plan_order_whole_videos_together():
    def block(positions, views=1):
        pos = np.repeat(positions, views)
        return {"position": np.asarray(pos), "view": np.tile(np.arange(views), len(positions))}

    # Units arrive in the order their tasks finish (3, 1 | 2, 4, video 2's views split
    # between blocks and out of order); video 5 failed to decode: one placeholder row.
    blocks = [block([3, 1], 2), {"position": np.asarray([2]), "view": np.asarray([1])}]
    blocks += [{"position": np.asarray([4, 2, 4]), "view": np.asarray([0, 0, 1])}]
    blocks += [{"position": np.asarray([5]), "view": np.asarray([-1])}]
    rows = list(planned_rows(iter(blocks), 1, 6, views=2))
    assert [(int(r["position"]), int(r["view"])) for r in rows] == [
        (p, v) for p in (1, 2, 3, 4) for v in (0, 1)
    ] + [(5, -1)]
    with pytest.raises(RuntimeError, match="stopped at video 2 of 5"):
        list(planned_rows(iter([block([1, 3, 4])]), 1, 5))  # video 2 never came
    batches = list(batches_of(iter(rows), 3))
    assert [len(b["position"]) for b in batches] == [3, 3, 3]
