"""The conditional search space and the planning of sampled configurations."""

from __future__ import annotations

import optuna
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.data.decode import ClipSpec, choose_rendition
from raylab.models import build_model
from raylab.tune.space import (
    STM_STAGE_SETS,
    Budget,
    DataLimits,
    Pruned,
    SearchSpace,
    TrialPlan,
    plan_trial,
)

SPACE = SearchSpace()
T3D_KEYS = {"family", "depth", "frames", "size", "stride", "lr", "weight_decay"}
STM_KEYS = {"family", "stm_stages", "stm_blocks", "frames", "size", "stride", "lr", "weight_decay"}


def sample(space: SearchSpace, n: int, seed: int = 0) -> list[dict]:
    """Configurations as Ray's OptunaSearch builds them: sampled params plus constants."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define(trial)
        out.append(trial.params | constants)
        study.tell(trial, 0.0)
    return out


def test_family_decides_which_knobs_exist():
    configs = sample(SPACE, 60)
    families = {c["family"] for c in configs}
    assert families == {"t3d", "stm"}
    for c in configs:
        assert set(c) == (T3D_KEYS if c["family"] == "t3d" else STM_KEYS), c


def test_a_single_choice_fixes_a_knob_as_a_constant():
    space = SearchSpace(family=("stm",), frames=(8,), lr=(1e-3,))
    study = optuna.create_study()
    trial = study.ask()
    constants = space.define(trial)
    assert constants == {"family": "stm", "frames": 8, "lr": 1e-3}
    assert not {"family", "frames", "lr", "depth"} & set(trial.params)
    assert {"stm_stages", "stm_blocks", "size", "stride", "weight_decay"} <= set(trial.params)


def test_stage_sets_are_every_nonempty_subset():
    assert len(STM_STAGE_SETS) == 15 and len(set(STM_STAGE_SETS)) == 15
    assert "2345" in STM_STAGE_SETS and "5" in STM_STAGE_SETS


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("family", ("c3d",), "family"),
        ("depth", (50,), "depth"),
        ("frames", (), "frames"),
        ("lr", (1e-3, 1e-2, 1e-1), "lr"),
        ("stm_stages", ("16",), "stm_stages"),
    ],
)
def test_bad_space_is_refused_with_the_knob_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**{field: value})


def _check_runnable(plan: TrialPlan, limits: DataLimits, classes: int) -> None:
    """The plan's model takes the plan's clips and the shards can serve them."""
    assert (plan.frames - 1) * plan.stride + 1 <= limits.min_frames
    spec = ClipSpec(frames=plan.frames, stride=plan.stride, size=plan.size)
    assert choose_rendition(limits.renditions, spec.working_short_side) in limits.renditions
    with torch.device("meta"):
        model = build_model(plan.model, classes, **plan.model_options).eval()
        out = model(torch.empty(plan.batch_size, 3, plan.frames, plan.size, plan.size))
    assert tuple(out.shape) == (plan.batch_size, classes)
    assert plan.batch_size >= 1 and plan.gmacs > 0 and plan.params_m > 0


configs = st.fixed_dictionaries(
    {
        "family": st.sampled_from(SPACE.family),
        "depth": st.sampled_from(SPACE.depth),
        "stm_stages": st.sampled_from(SPACE.stm_stages),
        "stm_blocks": st.sampled_from(SPACE.stm_blocks),
        "frames": st.sampled_from(SPACE.frames),
        "size": st.sampled_from(SPACE.size),
        "stride": st.sampled_from(SPACE.stride),
        "lr": st.floats(1e-4, 1e-2),
        "weight_decay": st.floats(1e-5, 1e-2),
    }
)
limits_st = st.builds(
    DataLimits,
    renditions=st.sampled_from([(128,), (128, 256), (256,), (64,)]),
    min_frames=st.sampled_from([16, 32, 64, 250]),
    num_classes=st.sampled_from([8, 101]),
    train_videos=st.just(100),
)
budgets = st.builds(
    Budget,
    memory_gib=st.sampled_from([0.05, 2.0, 16.0, 72.0]),
    max_batch=st.sampled_from([1, 8, 32]),
    width=st.sampled_from([0.125, 0.25]),
)


@settings(max_examples=40, deadline=None)
@given(config=configs, limits=limits_st, budget=budgets)
def test_every_draw_is_runnable_or_pruned_with_a_reason(config, limits, budget):
    # Keep only the keys the family has, as the define-by-run space does.
    drop = {"stm_stages", "stm_blocks"} if config["family"] == "t3d" else {"depth"}
    config = {k: v for k, v in config.items() if k not in drop}
    plan = plan_trial(config, limits, budget)
    if isinstance(plan, Pruned):
        assert isinstance(plan.reason, str) and len(plan.reason) > 20
    else:
        _check_runnable(plan, limits, limits.num_classes)
        assert plan.memory_gib <= budget.memory_gib
        assert plan.batch_size <= budget.max_batch


LIMITS = DataLimits(renditions=(128,), min_frames=32, num_classes=8, train_videos=64)
TINY = Budget(memory_gib=4.0, max_batch=8, width=0.125)
BASE = {"frames": 32, "size": 112, "stride": 1, "lr": 1e-3, "weight_decay": 1e-4}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"frames": 64}, "longer than the shortest training video (32 frames)"),
        ({"frames": 16, "stride": 4}, "clip span 61 frames"),
        ({"size": 160}, "above the stored renditions [128]"),
        ({"frames": 16}, "needs T >= 29"),
    ],
)
def test_pruning_reasons_name_the_problem(change, words):
    plan = plan_trial({"family": "t3d", "depth": 121} | BASE | change, LIMITS, TINY)
    assert isinstance(plan, Pruned)
    assert words in plan.reason


def test_memory_estimate_lowers_the_batch_then_prunes():
    config = {"family": "t3d", "depth": 121} | BASE
    roomy = plan_trial(config, LIMITS, TINY)
    assert isinstance(roomy, TrialPlan) and roomy.batch_size == 8
    per_clip = (roomy.memory_gib - plan_trial(config, LIMITS, Budget(4.0, 1, 0.125)).memory_gib) / 7
    tight = plan_trial(config, LIMITS, Budget(roomy.memory_gib - 5 * per_clip, 8, 0.125))
    assert isinstance(tight, TrialPlan) and tight.batch_size == 2  # 3 fit -> a power of two
    none = plan_trial(config, LIMITS, Budget(0.001, 8, 0.125))
    assert isinstance(none, Pruned) and "estimated memory" in none.reason


def test_cost_grows_with_the_clip():
    stm = {"family": "stm", "stm_stages": "2345", "stm_blocks": "all"} | BASE | {"frames": 8}
    small = plan_trial(stm, LIMITS, TINY)
    big = plan_trial(stm | {"frames": 16}, LIMITS, TINY)
    assert big.gmacs == pytest.approx(2 * small.gmacs, rel=0.01)  # 2D per frame: linear in T
    assert big.params_m == small.params_m
    first = plan_trial(stm | {"stm_blocks": "first"}, LIMITS, TINY)
    assert first.params_m < small.params_m  # fewer STM blocks, fewer CMM weights
