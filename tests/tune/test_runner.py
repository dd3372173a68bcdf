"""An experiment's options, and what its search leaves: the best checkpoint, the command that
retrains it, no placement group still held."""

from __future__ import annotations

import json

import pytest

from jobs import train as train_job
from raylab.config import TrainConfig
from raylab.tune.options import TuneOptions, load_options, save_options
from raylab.tune.runner import trial_table
from raylab.tune.space import SearchSpace


def train_args(argv: list[str]):
    """jobs/train.py's own argument parser."""
    return train_job.parse_args(argv)


def options(**kw) -> TuneOptions:
    return TuneOptions(shards="/data/shards", storage_path="/tmp/results", name="x", **kw)


def test_options_round_trip(tmp_path):
    opts = TuneOptions(
        shards="/d",
        storage_path=str(tmp_path),
        name="e",
        space=SearchSpace(frames=(16, 32)),
        seed=3,
        max_epochs=4,
        val_clips=2,
        dropout=0.2,
    )
    save_options(opts)
    back = load_options(str(tmp_path), "e")
    assert back == opts and back.space.frames == (16, 32)
    # Beside them, what every trial trains but the drawn knobs, as a run record.
    saved = json.loads((tmp_path / "e" / "options.json").read_text())["trial_template"]
    template = TrainConfig.from_record(saved)
    assert template == opts.trial_template()
    assert (template.seed, template.epochs, template.clip.test_clips) == (3, 4, 2)
    assert template.model_options == {"dropout": 0.2} and template.optimizer == "adamw"
    with pytest.raises(FileNotFoundError, match="no experiment 'other'"):
        load_options(str(tmp_path), "other")


def test_study_of_an_s3_experiment_stays_local():
    opts = TuneOptions(shards="/d", storage_path="s3://bucket/results", name="e")
    assert opts.experiment_dir == "s3://bucket/results/e"
    assert "://" not in str(opts.study_path) and opts.study_path.name == "optuna.db"


def test_a_recorded_config_trains_the_same_run(tmp_path):
    """``jobs/train.py --config RECORD.json`` (a run's config.json, the search's
    best/config.json) trains the run the record holds, seed included; a flag that would
    change it is refused."""
    import json

    from raylab.config import ClipConfig, TrainConfig

    clips = ClipConfig(
        frames=8,
        stride=2,
        size=112,
        scheme="segments",
        crop_scales=(1.0, 0.875),
        flip=True,
        test_clips=2,
        test_crops=3,
    )
    config = TrainConfig(
        model="stm",
        model_options={"width": 0.125, "stm_stages": [4, 5], "stm_blocks": "first"},
        classes=("a", "b"),
        clip=clips,
        workers=2,
        batch_size=8,
        optimizer="adamw",
        lr=0.00123,
        weight_decay=3e-4,
        seed=3,
    )
    record = tmp_path / "config.json"
    record.write_text(json.dumps(config.record()))
    args = train_args(["--data", "/data/shards", "--config", str(record), "--out", "/o"])
    assert train_job.train_config(args) == config
    with pytest.raises(SystemExit):
        train_args(["--data", "/d", "--config", str(record), "--out", "/o", "--lr", "0.1"])
    with pytest.raises(SystemExit):
        train_args(["--data", "/d", "--out", "/o"])  # neither --model nor --config


def test_search_methods_are_checked_and_travel_with_the_options(tmp_path):
    with pytest.raises(ValueError, match="searcher must be one of"):
        options(searcher="grid")
    with pytest.raises(ValueError, match="early_stopping must be one of"):
        options(early_stopping="hyperband")
    opts = TuneOptions(
        shards="/d",
        storage_path=str(tmp_path),
        name="m",
        searcher="random",
        early_stopping="none",
        time_budget_s=120.0,
        budget_epochs=14,
        dropout=0.2,
        crop_scales=(1.0, 0.875),
    )
    save_options(opts)
    back = load_options(str(tmp_path), "m")
    assert back == opts and back.crop_scales == (1.0, 0.875)  # a tuple again, not a list
    with pytest.raises(ValueError, match="budget_epochs must be at least 1"):
        options(budget_epochs=0)


def test_placement_groups_left_by_the_search_are_released(ray_session):
    """A placement group a stopped trial left reserved would starve the final evaluation."""
    import time

    from ray.util.placement_group import placement_group

    from raylab.tune.runner import release_placement_groups

    cpus = ray_session.cluster_resources()["CPU"]
    held = placement_group([{"CPU": 1}])
    ray_session.get(held.ready(), timeout=60)
    assert ray_session.available_resources().get("CPU", 0) <= cpus - 1
    assert held.id.hex() in release_placement_groups()
    deadline = time.time() + 30
    while ray_session.available_resources().get("CPU", 0) < cpus and time.time() < deadline:
        time.sleep(0.1)
    assert ray_session.available_resources().get("CPU", 0) == cpus
    assert ray_session.util.placement_group_table(held)["state"] == "REMOVED"


def test_a_trial_the_budget_ended_before_its_first_result_has_a_row():
    # Tune's Results as the search's ResultGrid holds them: one trial trained two epochs; the
    # other was created as the time budget ran out and never reported (no config, no metrics).
    import pandas as pd
    from ray.tune import Result

    trained = Result(
        metrics={"trial_id": "181c6039", "config": {"family": "t3d", "depth": 121}},
        checkpoint=None,
        error=None,
        path="/x/run_trial_181c6039_2_depth=121,family=t3d_2026-12-03_20-46-17",
        metrics_dataframe=pd.DataFrame(
            {"val_video_top1": [0.229, 0.427], "training_iteration": [1, 2], "clips_per_s": 11}
        ),
    )
    unreported = Result(
        metrics={},
        checkpoint=None,
        error=None,
        path="/x/run_trial_237a0d1f_3_depth=121,family=t3d,frames=32_2026-12-03_20-51-30",
        metrics_dataframe=None,
    )
    rows = trial_table([trained, unreported], max_epochs=8)
    assert rows[0] | {"path": ""} == {
        "trial_id": "181c6039",
        "path": "",
        "family": "t3d",
        "depth": 121,
        "val_video_top1": 0.427,
        "best_epoch": 2,
        "epochs": 2,
        "clips_per_s": 11.0,
        "best_checkpoint": None,
        "status": "stopped",
    }
    assert rows[1] == {"trial_id": "237a0d1f", "path": unreported.path, "status": "stopped"}


def test_the_best_epoch_is_the_later_of_equal_scores():
    """As the Train run keeps checkpoints (the best by score, the newer of equals): the
    table's best epoch must be one whose checkpoint is still there."""
    import pandas as pd
    from ray.tune import Result

    tied = Result(
        metrics={"trial_id": "181c6039", "config": {"family": "t3d"}},
        checkpoint=None,
        error=None,
        path="/x/run_trial_181c6039_1_family=t3d_2026-12-03_20-46-17",
        metrics_dataframe=pd.DataFrame(
            {
                "val_video_top1": [0.5, 0.823, 0.823, 0.8],
                "epoch": [1, 2, 3, 4],
                "training_iteration": [1, 2, 3, 4],
                "clips_per_s": 11,
            }
        ),
    )
    assert trial_table([tied], max_epochs=4)[0]["best_epoch"] == 3
