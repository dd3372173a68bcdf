"""The conditional search space and the planning of sampled configurations."""

from __future__ import annotations

import optuna
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from raylab.config import TrainConfig
from raylab.data.clips import ClipConfig, choose_rendition
from raylab.metrics import SIZING_KEY
from raylab.models import build_model, input_contract
from raylab.tune.space import (
    STM_STAGE_SETS,
    Budget,
    DataLimits,
    Pruned,
    SearchSpace,
    TrialPlan,
    knobs,
    model_of,
    plan_trial,
    size_trial,
)

SPACE = SearchSpace()
T3D_KEYS = {"family", "depth", "frames", "size", "stride", "lr", "weight_decay"}
STM_KEYS = {"family", "stm_stages", "stm_blocks", "frames", "size", "stride", "lr", "weight_decay"}


def sample(
    space: SearchSpace, n: int, seed: int = 0, tpe: bool = False, max_span: int | None = None
) -> list[dict]:
    """Configurations as Ray's OptunaSearch builds them: sampled params plus constants."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=3)
        if tpe
        else optuna.samplers.RandomSampler(seed=seed)
    )
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.define(trial, max_span=max_span)
        out.append(trial.params | constants)
        study.tell(trial, float(len(out) % 3))
    return out


def test_family_decides_which_knobs_exist():
    configs = sample(SPACE, 60)
    families = {c["family"] for c in configs}
    assert families == {"t3d", "stm"}
    for c in configs:
        assert set(knobs(c)) == (T3D_KEYS if c["family"] == "t3d" else STM_KEYS), c


def test_a_single_choice_fixes_a_knob_as_a_constant():
    space = SearchSpace(family=("stm",), frames=(8,), lr=(1e-3,))
    study = optuna.create_study()
    trial = study.ask()
    constants = space.define(trial)
    assert constants == {"family": "stm", "frames": 8, "lr": 1e-3}
    assert not {"family", "frames", "lr", "depth"} & set(trial.params)
    assert {"stm_stages", "stm_blocks", "size", "stride", "weight_decay"} <= set(trial.params)


def test_a_family_draws_only_the_frames_its_models_take():
    # T3D's pooling needs T >= 29: of 8, 16, 32, 64 it may draw 32 and 64 only, under a name
    # of its own; STM takes all four under the plain name.
    assert SPACE.feasible("t3d", "frames") == (32, 64)
    assert SPACE.feasible("stm", "frames") == SPACE.frames
    assert SPACE.param_name("t3d", "frames") == "t3d_frames"
    assert SPACE.param_name("stm", "frames") == "frames"
    drawn = {(c["family"], c["frames"]) for c in sample(SPACE, 80)}
    assert {f for fam, f in drawn if fam == "t3d"} == {32, 64}
    assert {f for fam, f in drawn if fam == "stm"} == set(SPACE.frames)


def test_a_family_draws_from_frame_counts_of_its_own_when_given():
    # STM's own 8 or 16 (its paper's) where T3D takes 32 of the shared choices: STM draws
    # under a name of its own, T3D keeps its constant.
    space = SearchSpace(frames=(8, 32), stm_frames=(8, 16))
    assert space.feasible("stm", "frames") == (8, 16)
    assert space.param_name("stm", "frames") == "stm_frames"
    drawn = sample(space, 60)
    assert {c["frames"] for c in drawn if c["family"] == "stm"} == {8, 16}
    assert {c["frames"] for c in drawn if c["family"] == "t3d"} == {32}
    assert all("stm_frames" in c for c in drawn if c["family"] == "stm")
    with pytest.raises(ValueError, match=r"t3d takes frames >= 29, and none of --t3d-frames 16"):
        SearchSpace(t3d_frames=(16,))


def test_a_family_with_one_feasible_choice_gets_it_as_a_constant():
    space = SearchSpace(frames=(8, 16, 32), size=(32, 48))
    for c in sample(space, 30):
        if c["family"] == "t3d":
            assert c["frames"] == 32 and "t3d_frames" not in c


def test_strides_are_drawn_among_those_whose_clip_fits_the_videos():
    space = SearchSpace(family=("stm",), frames=(8, 16), stride=(1, 2, 4))
    assert space.strides(8, max_span=32) == (1, 2, 4)  # 29 frames
    assert space.strides(16, max_span=32) == (1, 2)  # 31; at 4 it would span 61
    drawn = sample(space, 60, max_span=32)
    assert {(c["frames"], c["stride"]) for c in drawn} == {
        (8, 1), (8, 2), (8, 4), (16, 1), (16, 2)
    }  # fmt: skip
    assert all("stride_16f" in c for c in drawn if c["frames"] == 16)


def test_a_family_with_no_clip_that_fits_the_videos_is_refused():
    space = SearchSpace(frames=(8, 32), stride=(1, 2))
    space.check_data(32)
    with pytest.raises(ValueError, match=r"no t3d clip fits the shortest training video \(24"):
        space.check_data(24)


def test_a_space_whose_family_can_take_no_choice_is_refused():
    with pytest.raises(ValueError, match=r"t3d takes frames >= 29.*--family"):
        SearchSpace(family=("t3d", "stm"), frames=(8, 16))
    SearchSpace(family=("stm",), frames=(8, 16))  # STM alone takes them


spaces = st.builds(
    SearchSpace,
    family=st.sampled_from([("t3d",), ("stm",), ("t3d", "stm")]),
    depth=st.sampled_from([(121,), (121, 169, 201)]),
    frames=st.lists(st.sampled_from([4, 8, 16, 24, 32, 48, 64]), min_size=1, unique=True)
    .filter(lambda f: max(f) >= 29)
    .map(tuple),
    size=st.lists(st.sampled_from([16, 28, 32, 48, 64, 112]), min_size=1, unique=True)
    .filter(lambda s: max(s) >= 29)
    .map(tuple),
    stride=st.sampled_from([(1,), (1, 2, 4)]),
    t3d_frames=st.sampled_from([(), (32, 64)]),
    stm_frames=st.sampled_from([(), (8, 16), (4, 64)]),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(space=spaces, seed=st.integers(0, 3), max_span=st.sampled_from([None, 32, 64]))
def test_no_draw_of_any_space_breaks_a_models_input_contract(space, seed, max_span):
    # Optuna itself refuses a parameter name drawn with two sets of choices, so a space that
    # reused one name across families would fail here too. That the contracts are what the
    # models take is tests/models/test_build.py's test_input_contract_is_what_the_model_takes.
    try:
        space.check_data(max_span or 10**6)
    except ValueError as refused:
        # Refused at the start, rightly: its clips are longer than the videos. Not counted
        # as an example, so a check that refused every space fails Hypothesis's health
        # check (too many examples filtered) instead of passing.
        shortest = min((f - 1) * min(space.stride) + 1 for f in space.frames)
        assert max_span is not None and shortest > 29 or "--family" in str(refused)
        assume(False)
    for config in sample(space, 12, seed=seed, tpe=seed % 2 == 0, max_span=max_span):
        name, options = model_of(config, 0.125)
        assert input_contract(name, **options).refusal(config["frames"], config["size"]) is None
        if max_span is not None:
            assert (config["frames"] - 1) * config["stride"] + 1 <= max_span, config


def test_stage_sets_are_every_nonempty_subset():
    assert len(STM_STAGE_SETS) == 15 and len(set(STM_STAGE_SETS)) == 15
    assert "2345" in STM_STAGE_SETS and "5" in STM_STAGE_SETS


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("family", ("c3d",), r"family \['c3d'\] not among \['stm', 't3d'\]"),
        ("depth", (50,), r"depth \[50\] not among \[121, 169, 201\]"),
        ("stm_blocks", ("some",), r"stm_blocks \['some'\] not among"),
        ("frames", (), "frames"),
        ("stm_frames", (0, 8), "stm_frames must be positive"),
        ("lr", (1e-3, 1e-2, 1e-1), "lr"),
        ("stm_stages", ("16",), r"stm_stages \['16'\] not among"),
    ],
)
def test_bad_space_is_refused_with_the_knob_named(field, value, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace(**{field: value})


def _check_runnable(plan: TrialPlan, limits: DataLimits, classes: int) -> None:
    """The plan's model takes the plan's clips and the shards can serve them."""
    run = plan.run
    frames, stride, size = run.clip.frames, run.clip.stride, run.clip.size
    assert (frames - 1) * stride + 1 <= limits.min_frames
    spec = ClipConfig(frames=frames, stride=stride, size=size)
    assert choose_rendition(limits.renditions, spec.working_short_side) in limits.renditions
    with torch.device("meta"):
        model = build_model(run.model, classes, **run.model_options).eval()
        out = model(torch.empty(run.batch_size, 3, frames, size, size))
    assert tuple(out.shape) == (run.batch_size, classes)
    assert run.batch_size >= 1 and plan.gmacs > 0 and plan.params_m > 0


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


FITS = DataLimits(renditions=(128,), min_frames=64, num_classes=8, train_videos=100)
ROOMY = Budget(memory_gib=72.0, max_batch=8, width=0.125)
DRAW = {"frames": 32, "size": 112, "stride": 1, "lr": 1e-3, "weight_decay": 1e-4}


@settings(max_examples=40, deadline=None, derandomize=True)
@given(config=configs, limits=limits_st, budget=budgets)
# Draws that fit the data and the memory, always among the examples: they must run.
@example(config={"family": "t3d", "depth": 121} | DRAW, limits=FITS, budget=ROOMY)
@example(
    config={"family": "stm", "stm_stages": "2345", "stm_blocks": "all"} | DRAW | {"frames": 8},
    limits=FITS,
    budget=ROOMY,
)
def test_every_draw_is_runnable_or_pruned_with_a_reason(config, limits, budget):
    # Keep only the keys the family has, as the define-by-run space does.
    drop = {"stm_stages", "stm_blocks"} if config["family"] == "t3d" else {"depth"}
    config = {k: v for k, v in config.items() if k not in drop}
    if config["family"] == "t3d" and config["frames"] < 29:
        return  # not drawn: test_no_draw_of_any_space_breaks_a_models_input_contract
    plan = plan_trial(config, limits, budget)
    span = (config["frames"] - 1) * config["stride"] + 1
    too_long = span > limits.min_frames
    # Crops are cut from frames at short side 8/7 of the crop (128 for 112).
    stored = any(r >= round(config["size"] * 8 / 7) for r in limits.renditions)
    if too_long or not stored:
        # The data cannot serve it: pruned, whatever the memory.
        assert isinstance(plan, Pruned), (config, limits)
    elif budget.memory_gib == 72.0 and budget.width == 0.125:
        assert not isinstance(plan, Pruned), (config, limits, plan)  # it fits: it runs
    if isinstance(plan, Pruned):
        assert isinstance(plan.reason, str) and len(plan.reason) > 20
    else:
        _check_runnable(plan, limits, limits.num_classes)
        assert plan.memory_gib <= budget.memory_gib
        assert plan.run.batch_size <= budget.max_batch


LIMITS = DataLimits(renditions=(128,), min_frames=32, num_classes=8, train_videos=64)
TINY = Budget(memory_gib=4.0, max_batch=8, width=0.125)
BASE = {"frames": 32, "size": 112, "stride": 1, "lr": 1e-3, "weight_decay": 1e-4}


@pytest.mark.parametrize(
    "change, words",
    [
        ({"frames": 64}, "longer than the shortest training video (32 frames)"),
        ({"frames": 16, "stride": 4}, "clip span 61 frames"),
        ({"size": 160}, "above the stored renditions [128]"),
    ],
)
def test_pruning_reasons_name_the_problem(change, words):
    plan = plan_trial({"family": "t3d", "depth": 121} | BASE | change, LIMITS, TINY)
    assert isinstance(plan, Pruned)
    assert words in plan.reason


def test_a_clip_the_model_cannot_take_is_an_error_not_a_pruning():
    with pytest.raises(ValueError, match="t3d121 cannot take.*needs T >= 29"):
        plan_trial({"family": "t3d", "depth": 121} | BASE | {"frames": 16}, LIMITS, TINY)


def test_memory_estimate_lowers_the_batch_then_prunes():
    config = {"family": "t3d", "depth": 121} | BASE
    roomy = plan_trial(config, LIMITS, TINY)
    assert isinstance(roomy, TrialPlan) and roomy.run.batch_size == 8
    per_clip = (roomy.memory_gib - plan_trial(config, LIMITS, Budget(4.0, 1, 0.125)).memory_gib) / 7
    tight = plan_trial(config, LIMITS, Budget(roomy.memory_gib - 5 * per_clip, 8, 0.125))
    assert isinstance(tight, TrialPlan) and tight.run.batch_size == 2  # 3 fit -> a power of two
    none = plan_trial(config, LIMITS, Budget(0.001, 8, 0.125))
    assert isinstance(none, Pruned) and "estimated memory" in none.reason


def test_a_sizing_from_the_driver_is_the_trials_own_and_is_taken_as_given():
    stm = {"family": "stm", "stm_stages": "45", "stm_blocks": "first"} | BASE | {"frames": 8}
    sizing = size_trial(stm, LIMITS, TINY)
    own, handed = (
        plan_trial(stm, LIMITS, TINY),
        plan_trial(stm | {SIZING_KEY: sizing}, LIMITS, TINY),
    )
    assert handed == own and sizing["batch_size"] == own.run.batch_size == 8
    # Taken as given: a trial does not measure again what its driver measured.
    smaller = plan_trial(stm | {SIZING_KEY: sizing | {"batch_size": 2}}, LIMITS, TINY)
    assert smaller.run.batch_size == 2
    pruned = plan_trial(stm | {SIZING_KEY: {"pruned": "too big"}}, LIMITS, TINY)
    assert pruned == Pruned("too big")
    # The data's and the model's refusals stay the trial's to say.
    assert size_trial(stm | {"frames": 64}, LIMITS, TINY) is None
    assert size_trial({"family": "t3d", "depth": 121} | BASE | {"frames": 16}, LIMITS, TINY) is None


def test_a_network_and_clip_are_measured_once(monkeypatch):
    """The driver sizes every trial; one network on one clip is built and measured once."""
    import raylab.tune.space as space

    built = []
    real = space.build_model
    monkeypatch.setattr(space, "build_model", lambda *a, **k: built.append(a) or real(*a, **k))
    space._measured.cache_clear()
    stm = {"family": "stm", "stm_stages": "25", "stm_blocks": "first"} | BASE | {"frames": 8}
    first = size_trial(stm, LIMITS, TINY)
    assert size_trial(stm | {"lr": 5e-3, "weight_decay": 1e-3}, LIMITS, TINY) == first
    assert len(built) == 1
    assert size_trial(stm | {"frames": 16}, LIMITS, TINY)["gmacs"] > first["gmacs"]
    assert size_trial(stm | {"stm_stages": "2"}, LIMITS, TINY)["params_m"] < first["params_m"]
    assert len(built) == 3


def test_a_sized_trial_plans_without_torch_dynamo():
    """Measuring a network imports torch._dynamo (a second of a trial's start); a trial its
    driver sized plans without it."""
    import subprocess
    import sys

    config = {"family": "t3d", "depth": 121} | BASE
    sizing = size_trial(config, LIMITS, TINY)
    program = f"""
import sys
from raylab.tune.space import Budget, DataLimits, plan_trial
limits = DataLimits(renditions=(128,), min_frames=32, num_classes=8, train_videos=64)
plan = plan_trial({config | {SIZING_KEY: sizing}!r}, limits, Budget(4.0, 8, 0.125))
print(plan.run.batch_size, "torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(sizing["batch_size"]), "False"]


def test_cost_grows_with_the_clip():
    stm = {"family": "stm", "stm_stages": "2345", "stm_blocks": "all"} | BASE | {"frames": 8}
    small = plan_trial(stm, LIMITS, TINY)
    big = plan_trial(stm | {"frames": 16}, LIMITS, TINY)
    assert big.gmacs == pytest.approx(2 * small.gmacs, rel=0.01)  # 2D per frame: linear in T
    assert big.params_m == small.params_m
    first = plan_trial(stm | {"stm_blocks": "first"}, LIMITS, TINY)
    assert first.params_m < small.params_m  # fewer STM blocks, fewer CMM weights


def test_a_plan_is_the_experiments_template_with_the_drawn_knobs():
    """What a trial trains: every setting of the experiment's template (seed, epochs,
    workers, crop scales, test clips, dropout), the drawn network, clip and optimiser
    settings in place of the template's, and the batch its memory allows."""
    template = TrainConfig(
        model="c3d",
        model_options={"dropout": 0.3},
        clip=ClipConfig(crop_scales=(1.0, 0.875), test_clips=3, size=64, frames=4),
        epochs=7,
        workers=2,
        seed=5,
    )
    stm = {"family": "stm", "stm_stages": "45", "stm_blocks": "first"} | BASE | {"frames": 8}
    run = plan_trial(stm, LIMITS, TINY, template).run
    assert run.model == "stm" and run.batch_size == 8
    assert run.model_options == {
        "width": 0.125, "stm_stages": [4, 5], "stm_blocks": "first", "dropout": 0.3
    }  # fmt: skip
    assert (run.clip.frames, run.clip.stride, run.clip.size) == (8, 1, 112)
    assert (run.clip.crop_scales, run.clip.test_clips) == ((1.0, 0.875), 3)
    assert (run.epochs, run.workers, run.seed, run.lr, run.weight_decay) == (7, 2, 5, 1e-3, 1e-4)


def test_data_limits_are_read_from_the_manifest_and_the_training_split(tiny_shards):
    assert DataLimits.of(tiny_shards) == DataLimits(
        renditions=(32,), min_frames=20, num_classes=3, train_videos=8
    )
