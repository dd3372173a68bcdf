"""Pieces of the training loop outside a Train run: schedules, optimisers, decode failures,
and the passes started ahead of the trainer."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from raylab.config import TrainConfig
from raylab.train.epoch import DataOptions, EpochData, Lookahead, head_start, loop_config
from raylab.train.loop import (
    DecodeFailures,
    check_decode_failures,
    lr_factor,
    make_optimizer,
)


def test_cosine_with_warmup_and_step_schedules():
    cfg = {"epochs": 10, "warmup_epochs": 2, "schedule": "cosine", "step_epochs": 30}
    assert lr_factor(0.0, **cfg) < 0.01
    assert lr_factor(1.0, **cfg) == pytest.approx(0.5, abs=0.01)
    assert lr_factor(2.0, **cfg) == pytest.approx(1.0)
    assert lr_factor(6.0, **cfg) == pytest.approx(0.5)
    assert lr_factor(10.0, **cfg) == pytest.approx(0.0, abs=1e-9)
    step = cfg | {"schedule": "step"}
    assert [lr_factor(e, **step) for e in (0, 29.9, 30, 61)] == pytest.approx([1, 1, 0.1, 0.01])


def test_optimizers_skip_decay_on_norms_and_biases():
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4))
    sgd = make_optimizer(model, "sgd", lr=0.1, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]
    decayed = [p.ndim for p in sgd.param_groups[0]["params"]]
    assert decayed == [5] and sgd.param_groups[1]["weight_decay"] == 0.0
    assert isinstance(make_optimizer(model, "adamw", 1e-3, 1e-4), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizer must be"):
        make_optimizer(model, "lamb", 1e-3, 1e-4)


def test_an_epoch_stops_when_no_video_or_too_many_fail_to_decode():
    assert TrainConfig.max_decode_failures == 0.05
    first = "video a/b: RuntimeError: Error reading 1673 bytes..."
    check_decode_failures(1, "training", 0, 24, "", 0.05)
    check_decode_failures(1, "training", 1, 20, first, 0.05)  # exactly 5%: kept
    with pytest.raises(DecodeFailures) as caught:
        check_decode_failures(3, "validation", 2, 20, first, 0.05)  # 10%
    assert str(caught.value) == (
        "epoch 3: 2 of 20 validation videos could not be decoded (at most 5% may fail); "
        f"the first: {first}"
    )
    # Nothing decoded stops the run whatever the tolerated share, an empty split too.
    with pytest.raises(DecodeFailures, match=r"^epoch 1: 128 of 128 training videos"):
        check_decode_failures(1, "training", 128, 128, first, 1.0)
    with pytest.raises(DecodeFailures, match=r"^epoch 1: 0 of 0 validation videos"):
        check_decode_failures(1, "validation", 0, 0, "", 0.05)


def _ids(batches) -> list[str]:
    return [str(v) for batch in batches for v in batch["video_id"]]


def test_each_pass_starts_before_the_one_before_it_ends(demo_shards):
    """Epoch 1's training pass is started once the validation pass's clips have all
    arrived, so it decodes while validation computes and the epoch is saved: it is there
    before the validation pass's last batch is handed over (started after validation, its
    first batch came 0.5 s late in every epoch of a demo T3D). And each epoch gets its own
    pass, whenever the passes' clips arrive."""
    from raylab.data.clips import ClipConfig
    from raylab.data.pipeline import row_groups

    config = TrainConfig(epochs=2, batch_size=8, clip=ClipConfig(frames=4, size=32))
    groups = {split: row_groups(demo_shards, split) for split in ("train", "val")}
    data = EpochData(DataOptions(shards=demo_shards), groups, config, 0, 1)
    plans = [data.train_plan(epoch) for epoch in range(2)]
    wanted = [_ids(data.train(epoch, plans[epoch], 0)) for epoch in range(2)]
    assert wanted[0] != wanted[1]

    passes = Lookahead(data, 2)
    passes.start_training(0)
    started_by_last_batch = []
    for epoch in range(2):
        assert _ids(passes.train(epoch, plans[epoch], 0)) == wanted[epoch]
        *_, last = (set(passes.started) for _ in passes.val(epoch))
        started_by_last_batch.append(last)
    assert started_by_last_batch == [{("train", 1)}, set()]  # none after the last epoch

    # Epoch 0's clips all arrived, and validation's, before the trainer took epoch 0's
    # pass (decode units finish out of order; a tiny pass has few): epoch 1's waits.
    early = Lookahead(data, 2)
    early.start_training(0)
    early.start_validation(0)
    early.start_training(1)
    assert set(early.started) == {("train", 0), ("val", 0)}
    assert _ids(early.train(0, plans[0], 0)) == wanted[0]
    assert _ids(early.train(1, plans[1], 0)) == wanted[1]
    off = EpochData(DataOptions(shards=demo_shards, lookahead=False), groups, config, 0, 1)
    assert not Lookahead(off, 2).on


def test_a_fresh_run_decodes_its_first_validation_pass_beside_its_first_training_pass(
    demo_shards,
):
    """start_run starts epoch 0's training and validation passes; epoch 1's training pass
    then starts as soon as epoch 0's clips have arrived, before the trainer has taken the
    validation pass, not after a validation pass decoded between them. Every pass hands
    over the batches it would have anyway. Without val_ahead, only the training pass."""
    from raylab.data.clips import ClipConfig
    from raylab.data.pipeline import row_groups

    config = TrainConfig(epochs=2, batch_size=8, clip=ClipConfig(frames=4, size=32))
    groups = {split: row_groups(demo_shards, split) for split in ("train", "val")}
    data = EpochData(DataOptions(shards=demo_shards), groups, config, 0, 1)
    plans = [data.train_plan(epoch) for epoch in range(2)]
    wanted = [_ids(data.train(epoch, plans[epoch], 0)) for epoch in range(2)]
    wanted_val = _ids(data.val())

    passes = Lookahead(data, 2)
    passes.start_run()
    assert set(passes.started) == {("train", 0), ("val", 0)}
    *_, last = (set(passes.started) for _ in passes.train(0, plans[0], 0))
    assert last == {("val", 0), ("train", 1)}
    assert _ids(passes.val(0)) == wanted_val
    assert _ids(passes.train(1, plans[1], 0)) == wanted[1]

    off = EpochData(DataOptions(shards=demo_shards, val_ahead=False), groups, config, 0, 1)
    after = Lookahead(off, 2)
    after.start_run()
    assert set(after.started) == {("train", 0)}
    *_, last = (set(after.started) for _ in after.train(0, plans[0], 0))
    assert last == {("val", 0)}


def test_a_fresh_run_decodes_its_first_clips_as_it_starts_and_its_first_pass_takes_them(
    demo_shards, tmp_path
):
    """A fresh run's config starts decoding each rank's first training clips
    (``head_start``): those blocks hold exactly the first ``videos`` positions of the
    rank's own plan, and the rank's first pass takes them and decodes only the rest,
    handing over the batches it would have without them. A run that has a history (it may
    resume) starts none."""
    import ray

    from raylab.data.clips import ClipConfig
    from raylab.data.pipeline import row_groups
    from raylab.data.storage import Shards

    config = TrainConfig(epochs=1, batch_size=4, workers=2, clip=ClipConfig(frames=4, size=32))
    groups = {split: row_groups(demo_shards, split) for split in ("train", "val")}
    clip_bytes = 4 * 32 * 32 * 3
    options = DataOptions(shards=demo_shards, head_start_bytes=2 * 5 * clip_bytes)
    head = head_start(config, options, Shards.open(demo_shards), groups["train"])
    assert head["videos"] == 5 and len(head["blocks"]) == 2

    for rank in range(2):
        plain = EpochData(options, groups, config, rank, 2)
        plan = plain.train_plan(0)
        assert len(plan) > head["videos"]
        blocks = ray.get(head["blocks"][rank])
        assert sorted(p for b in blocks for p in b["position"]) == list(range(5))
        want = list(plain.train(0, plan, 0))
        got = list(EpochData(options, groups, config, rank, 2, head=head).train(0, plan, 0))
        assert len(got) == len(want)
        for a, b in zip(want, got, strict=True):
            assert all(np.array_equal(a[k], b[k]) for k in ("clip", "label", "position"))
            assert list(a["video_id"]) == list(b["video_id"])

    # The blocks handed over are the ones taken: rank 1's head in rank 0's pass puts rank 1's
    # first clips at its first positions.
    swapped = head | {"blocks": head["blocks"][::-1]}
    rank0 = EpochData(options, groups, config, 0, 2, head=swapped)
    rank1 = EpochData(options, groups, config, 1, 2)
    ids = _ids(rank0.train(0, rank0.train_plan(0), 0))
    assert ids[:5] == _ids(rank1.train(0, rank1.train_plan(0), 0))[:5]

    run_dir = tmp_path / "run"
    assert loop_config(config, options, str(run_dir))["head_start"]["videos"] == 5
    run_dir.mkdir()
    (run_dir / "history.jsonl").write_text('{"event": "started"}\n')
    assert loop_config(config, options, str(run_dir))["head_start"] is None
    assert loop_config(config, replace(options, head_start_bytes=0))["head_start"] is None


def test_validation_is_decoded_once_and_handed_over_again_when_it_fits(demo_shards):
    """The second validation pass hands over the first one's batches, not newly decoded
    ones, and calls on_delivered before the first; above val_keep_bytes every pass
    decodes. The batches are the same either way."""
    from raylab.data.clips import ClipConfig
    from raylab.data.pipeline import row_groups

    config = TrainConfig(epochs=2, batch_size=2, clip=ClipConfig(frames=4, size=32))
    groups = {split: row_groups(demo_shards, split) for split in ("train", "val")}

    def passes(keep_bytes: int) -> tuple[list[dict], list[dict], list[str]]:
        data = EpochData(
            DataOptions(shards=demo_shards, val_keep_bytes=keep_bytes), groups, config, 0, 1
        )
        first = list(data.val())
        events: list[str] = []
        second = []
        for batch in data.val(on_delivered=lambda: events.append("delivered")):
            events.append("batch")
            second.append(batch)
        return first, second, events

    first, second, events = passes(DataOptions(shards=demo_shards).val_keep_bytes)
    assert len(first) > 1 and all(a is b for a, b in zip(first, second, strict=True))
    assert events[0] == "delivered" and events.count("batch") == len(first)
    small_first, small_second, _ = passes(first[0]["clip"].nbytes)  # not even a batch fits
    assert not any(a is b for a, b in zip(small_first, small_second, strict=True))
    for a, b in zip(first, small_second, strict=True):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_worker_flushes_denormal_floats_unless_told_not_to():
    """A float below 2**-126 is denormal: flushed, it computes as zero (and fast)."""
    from raylab.train.epoch import set_numerics

    tiny = torch.tensor([1e-39])
    cpu = torch.device("cpu")
    try:
        set_numerics(TrainConfig(), cpu)
        assert (tiny * 1.0).item() == 0.0
        set_numerics(TrainConfig(flush_denormal=False), cpu)
        assert (tiny * 1.0).item() == pytest.approx(1e-39)
    finally:
        torch.set_flush_denormal(False)
