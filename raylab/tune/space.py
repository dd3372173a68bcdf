"""The search space: T3D and STM architectures, clip shape and optimiser, and what can run.

The space is conditional (Optuna define-by-run): the ``family`` is drawn first and decides
which architecture knobs exist::

    family        t3d | stm
      t3d  depth          121 | 169 | 201
      stm  stm_stages     which of the paper's stages 2-5 hold STM blocks ("2345", "45", ...)
           stm_blocks     all (every bottleneck of those stages) | first (one per stage)
    frames        8 | 16 | 32 | 64         input frames per clip (or a family's own:
                                           t3d_frames, stm_frames)
    size          112 | 160 | 224          crop side
    stride        1 | 2 | 4 | 8            temporal stride between sampled frames
    lr            1e-4 .. 1e-2 (log)       AdamW, cosine schedule
    weight_decay  1e-5 .. 1e-2 (log)

Both families read dense clips (``frames`` frames ``stride`` apart), so stride means the
same thing for both. A :class:`SearchSpace` narrows any knob to fewer choices, and a knob
left with one choice is a constant of the experiment, not a searched parameter.

Every draw is one the drawn model takes: ``frames`` and ``size`` are drawn after the family,
among the choices that every model of that family accepts by its input contract
(``raylab.models.input_contract``; T3D's pooling needs T, H, W >= 29). A family may also be
given frame counts of its own (``stm_frames``: the STM paper's 8 or 16 where T3D takes 32),
which replace ``frames`` for it. When a family draws from other choices than ``frames``,
Optuna draws them under a name of that family's own (``t3d_frames``), since one parameter
name has one set of choices in a study; the trial's config carries the value under
``frames`` all the same.

:func:`plan_trial` turns a sampled configuration into the run it trains (a ``TrainConfig``:
the experiment's template with the drawn network, clips and batch size), or into a
:class:`Pruned` reason when the data or the machine cannot serve it: a clip longer than the
shortest video, a crop larger than the stored renditions, or a memory estimate above the
device.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from raylab.config import ClipConfig, TrainConfig
from raylab.data.storage import Shards
from raylab.metrics import SIZING_KEY
from raylab.models import build_model, input_contract
from raylab.models.common import measure

# The knobs a model's input contract limits.
CONTRACT_KNOBS = ("frames", "size")

STM_STAGE_SETS: tuple[str, ...] = tuple(
    "".join(c) for n in range(4, 0, -1) for c in itertools.combinations("2345", n)
)


@dataclass
class SearchSpace:
    """The choices of every knob; one choice fixes it. Ranges are (low, high), log-uniform."""

    # Each knob's metadata is its flag's (jobs/tune_t3d.py, by raylab.jobs.add_config_flags):
    # the choices a knob may list, and its help.
    family: tuple[str, ...] = field(default=("t3d", "stm"), metadata={"choices": ("t3d", "stm")})
    depth: tuple[int, ...] = field(
        default=(121, 169, 201),
        metadata={"choices": (121, 169, 201), "help": "T3D's DenseNet depth"},
    )
    stm_stages: tuple[str, ...] = field(
        default=STM_STAGE_SETS,
        metadata={"choices": STM_STAGE_SETS, "metavar": "STAGES", "help": "e.g. 2345 45 5"},
    )
    stm_blocks: tuple[str, ...] = field(
        default=("all", "first"), metadata={"choices": ("all", "first")}
    )
    frames: tuple[int, ...] = (8, 16, 32, 64)
    # A family's own frame counts; empty: ``frames``.
    t3d_frames: tuple[int, ...] = field(
        default=(), metadata={"help": "T3D's own, in place of --frames"}
    )
    stm_frames: tuple[int, ...] = field(
        default=(), metadata={"help": "STM's own, in place of --frames"}
    )
    size: tuple[int, ...] = (112, 160, 224)
    stride: tuple[int, ...] = (1, 2, 4, 8)
    lr: tuple[float, ...] = field(
        default=(1e-4, 1e-2), metadata={"help": "a value or a LOW HIGH range"}
    )
    weight_decay: tuple[float, ...] = field(
        default=(1e-5, 1e-2), metadata={"help": "a value or LOW HIGH"}
    )

    def __post_init__(self) -> None:
        for knob in fields(self):
            valid = knob.metadata.get("choices")
            bad = [v for v in getattr(self, knob.name) if valid and v not in valid]
            if bad:
                raise ValueError(f"search space: {knob.name} {bad} not among {sorted(valid)}")
        for name in ("family", "depth", "stm_stages", "stm_blocks", "frames", "size", "stride"):
            if not getattr(self, name):
                raise ValueError(f"search space: {name} needs at least one choice")
        for name in ("frames", "t3d_frames", "stm_frames", "size", "stride"):
            values = getattr(self, name)  # a family's own frames may be empty
            if values and min(values) < 1:
                raise ValueError(f"search space: {name} must be positive, got {values}")
        for name in ("lr", "weight_decay"):
            values = getattr(self, name)
            if len(values) not in (1, 2) or min(values) <= 0:
                raise ValueError(
                    f"search space: {name} is one positive value or a (low, high) range, "
                    f"got {values}"
                )
        for family in self.family:
            for knob in CONTRACT_KNOBS:
                if not self.feasible(family, knob):
                    contract = input_contract(self.models(family)[0])
                    low = contract.min_frames if knob == "frames" else contract.min_size
                    raise ValueError(
                        f"search space: {family} takes {knob} >= {low}, and none of "
                        f"{self.flag(family, knob)} "
                        f"{' '.join(map(str, self.choices(family, knob)))} is; "
                        f"add a choice >= {low} or leave {family} out with --family"
                    )

    def models(self, family: str) -> list[str]:
        """The ``build_model`` names the space can draw for ``family``."""
        return [f"t3d{d}" for d in self.depth] if family == "t3d" else ["stm"]

    def choices_name(self, family: str, knob: str) -> str:
        """The field ``family`` draws ``knob`` from: its own (``stm_frames``) when given."""
        own = f"{family}_{knob}"
        return own if getattr(self, own, ()) else knob

    def flag(self, family: str, knob: str) -> str:
        """The job's flag that sets what ``family`` draws ``knob`` from (``--stm-frames``)."""
        return "--" + self.choices_name(family, knob).replace("_", "-")

    def choices(self, family: str, knob: str) -> tuple[int, ...]:
        """The choices of ``knob`` offered to ``family``, before its input contract."""
        return getattr(self, self.choices_name(family, knob))

    def feasible(self, family: str, knob: str, max_span: int | None = None) -> tuple[int, ...]:
        """The choices of ``knob`` ("frames" or "size") that every model of ``family`` in
        this space takes, by the models' input contracts; with ``max_span`` (the shortest
        video's frames) only frame counts that fit it at the smallest stride."""
        contracts = [input_contract(m) for m in self.models(family)]
        accepts = {"frames": "takes_frames", "size": "takes_size"}[knob]
        choices = [
            v for v in self.choices(family, knob) if all(getattr(c, accepts)(v) for c in contracts)
        ]
        if knob == "frames" and max_span is not None:
            choices = [
                f for f in choices if ClipConfig(frames=f, stride=min(self.stride)).span <= max_span
            ]
        return tuple(choices)

    def strides(self, frames: int, max_span: int | None = None) -> tuple[int, ...]:
        """The strides whose clip of ``frames`` fits ``max_span`` frames (all without it)."""
        if max_span is None:
            return self.stride
        return tuple(s for s in self.stride if ClipConfig(frames=frames, stride=s).span <= max_span)

    def param_name(self, family: str, knob: str, max_span: int | None = None) -> str:
        """Optuna's name for ``knob`` under ``family``: the knob's own when the family draws
        from all of ``knob``'s choices, else ``<family>_<knob>`` (a name keeps one set of
        choices)."""
        full = self.feasible(family, knob, max_span) == getattr(self, knob)
        return knob if full else f"{family}_{knob}"

    def check_data(self, max_span: int) -> None:
        """Raise ValueError, naming the flag to change, when a family of the space has no
        clip that fits videos of ``max_span`` frames."""
        for family in self.family:
            if not self.feasible(family, "frames", max_span):
                takes = self.feasible(family, "frames")
                raise ValueError(
                    f"search space: no {family} clip fits the shortest training video "
                    f"({max_span} frames): {family} takes {self.flag(family, 'frames')} "
                    f"{' '.join(map(str, takes))} "
                    f"and the smallest --stride is {min(self.stride)}; "
                    + (
                        "leave it out with --family"
                        if len(self.family) > 1
                        else "use longer videos"
                    )
                )

    def define(self, trial, max_span: int | None = None) -> dict:
        """Optuna define-by-run: draws the family, then only that family's knobs, then a
        clip the drawn model takes and, with ``max_span`` (the shortest training video's
        frames), one that fits the videos: strides are drawn after the frames, among those
        whose clip spans at most ``max_span`` frames.

        Returns the knobs with one choice as constants (Ray's ``OptunaSearch`` merges them
        into the trial's config), so every trial's config names all of its knobs.
        """
        constants: dict = {}

        def pick(name: str, choices: tuple | None = None, param: str | None = None):
            choices = getattr(self, name) if choices is None else choices
            if len(choices) == 1:
                constants[name] = choices[0]
                return choices[0]
            value = trial.suggest_categorical(param or name, list(choices))
            if param and param != name:
                constants[name] = value  # the config names it plainly
            return value

        def log_range(name: str) -> None:
            values = getattr(self, name)
            if len(values) == 1:
                constants[name] = values[0]
            else:
                trial.suggest_float(name, min(values), max(values), log=True)

        family = pick("family")
        if family == "t3d":
            pick("depth")
        else:
            pick("stm_stages")
            pick("stm_blocks")
        drawn = {
            knob: pick(
                knob,
                self.feasible(family, knob, max_span),
                self.param_name(family, knob, max_span),
            )
            for knob in CONTRACT_KNOBS
        }
        frames = drawn["frames"]
        strides = self.strides(frames, max_span)
        # The strides that fit depend on the frames drawn: a name per frame count then.
        pick("stride", strides, "stride" if strides == self.stride else f"stride_{frames}f")
        log_range("lr")
        log_range("weight_decay")
        return constants

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}


def knobs(config: dict) -> dict:
    """The searched knobs of a trial's config by their plain names, in ``SEARCH_KEYS`` order
    (without the family-named Optuna parameters such as ``t3d_frames``)."""
    return {k: config[k] for k in SEARCH_KEYS if k in config}


@dataclass(frozen=True)
class DataLimits:
    """What the shards allow: stored renditions (short sides) and the shortest video."""

    renditions: tuple[int, ...]
    min_frames: int
    num_classes: int
    train_videos: int

    @classmethod
    def of(cls, shards: str | Path | Shards) -> DataLimits:
        """Read the manifest and the ``num_frames`` column of the training split."""
        shards = Shards.open(shards)
        manifest = shards.manifest
        frames = shards.frame_counts("train")
        return cls(
            renditions=manifest.renditions,
            min_frames=min(frames),
            num_classes=len(manifest.classes),
            train_videos=len(frames),
        )


@dataclass(frozen=True)
class Budget:
    """Where a trial runs: device memory per worker (GiB), the largest batch per worker,
    the channel multiplier of the networks (1.0 full size, small for CPU searches)."""

    memory_gib: float
    max_batch: int = 8
    width: float = 1.0


@dataclass(frozen=True)
class Pruned:
    """A configuration that is not run, and why."""

    reason: str


@dataclass
class TrialPlan:
    """What a valid configuration runs (``run``: the experiment's template with the drawn
    network, clips, batch and optimiser settings) and what it costs."""

    run: TrainConfig
    gmacs: float  # multiply-adds per clip, forward
    params_m: float
    memory_gib: float  # estimated training memory per worker at the run's batch size
    knobs: dict = field(default_factory=dict)

    @property
    def cost(self) -> dict:
        return {"gmacs": self.gmacs, "params_m": self.params_m, "memory_gib": self.memory_gib}


def model_of(config: dict, width: float) -> tuple[str, dict]:
    """The ``build_model`` name and options of a sampled configuration."""
    options: dict = {"width": width}
    if config["family"] == "t3d":
        return f"t3d{config['depth']}", options
    options["stm_stages"] = [int(s) for s in config["stm_stages"]]
    options["stm_blocks"] = config["stm_blocks"]
    return "stm", options


def data_refusal(config: dict, limits: DataLimits, template: TrainConfig) -> str | None:
    """Why the shards cannot feed a sampled ``config``'s clips (None: they can). Cheap, so
    that the search's console can say so when the trial starts (:func:`plan_trial`)."""
    frames, size = config["frames"], config["size"]
    clip = replace(template.clip, frames=frames, stride=config["stride"], size=size)
    if clip.span > limits.min_frames:
        return (
            f"clip span {clip.span} frames ({frames} frames x stride {clip.stride}) is longer "
            f"than the shortest training video ({limits.min_frames} frames)"
        )
    try:
        clip.rendition(limits.renditions)
    except ValueError:
        return (
            f"resolution {size} is cropped from frames at short side {clip.working_short_side},"
            f" above the stored renditions {list(limits.renditions)}"
        )
    return None


@functools.cache
def _measured(
    name: str, options: str, num_classes: int, frames: int, size: int
) -> tuple[float, float, float]:
    """``measure`` of a network on one clip, once per network and clip in a process: a
    search draws the same architecture and clip for many trials (``options``: its JSON)."""
    with torch.device("meta"):
        model = build_model(name, num_classes, **json.loads(options)).eval()
    return measure(model, (1, 3, frames, size, size))


def size_trial(
    config: dict, limits: DataLimits, budget: Budget, template: TrainConfig | None = None
) -> dict | None:
    """What a sampled ``config`` costs and the batch it trains at: ``{"batch_size", "gmacs",
    "params_m", "memory_gib"}``, or ``{"pruned": reason}`` when no batch fits ``budget``'s
    memory; None when the data or the model refuses the clip (:func:`plan_trial` says why).

    It builds the network on the meta device and runs it once under
    ``torch.utils.flop_counter``, whose first use in a process imports ``torch._dynamo``
    (a second): the search's driver sizes every trial as it is drawn and hands the result
    over in the config (``SIZING_KEY``), so no trial's start pays it.
    """
    template = template or TrainConfig(optimizer="adamw")
    if data_refusal(config, limits, template):
        return None
    name, options = model_of(config, budget.width)
    if input_contract(name, **options).refusal(config["frames"], config["size"]):
        return None
    return _sizing(name, options, config["frames"], config["size"], limits, budget)


def _sizing(
    name: str, options: dict, frames: int, size: int, limits: DataLimits, budget: Budget
) -> dict:
    """:func:`size_trial` of a network and clip the data and the model take. The batch is
    the largest power of two up to ``budget.max_batch`` whose estimated training memory
    (weights, gradients and AdamW state, plus twice the activations per clip for their
    gradients) fits ``budget.memory_gib``."""
    gmacs, params_m, act_gib = _measured(
        name, json.dumps(options, sort_keys=True), limits.num_classes, frames, size
    )
    fixed_gib = params_m * 1e6 * 4 * 4 / 2**30  # weights, gradients, two AdamW moments
    per_clip_gib = 2 * act_gib
    fits = math.floor((budget.memory_gib - fixed_gib) / per_clip_gib) if per_clip_gib else 0
    if fits < 1:
        return {
            "pruned": f"estimated memory {fixed_gib + per_clip_gib:.1f} GiB for a batch of one "
            f"{frames}x{size}x{size} clip is above the device's {budget.memory_gib:.1f} GiB"
        }
    batch = 2 ** int(math.log2(min(fits, budget.max_batch)))
    return {
        "batch_size": batch,
        "gmacs": gmacs,
        "params_m": params_m,
        "memory_gib": fixed_gib + batch * per_clip_gib,
    }


def plan_trial(
    config: dict, limits: DataLimits, budget: Budget, template: TrainConfig | None = None
) -> TrialPlan | Pruned:
    """The run a sampled ``config`` trains: ``template`` (the experiment's fixed settings:
    epochs, workers, seed, crop scales, test clips, dropout) with the drawn network, clip
    (frames, stride, size), learning rate and weight decay, and the largest batch that fits
    (:func:`size_trial`, taken from ``config[SIZING_KEY]`` where the search's driver put
    it); or the reason the data or the machine cannot serve it. A clip the model itself
    cannot take raises ValueError: the space draws none (:meth:`SearchSpace.define`).
    """
    template = template or TrainConfig(optimizer="adamw")
    refusal = data_refusal(config, limits, template)
    if refusal:
        return Pruned(refusal)
    frames, size = config["frames"], config["size"]
    clip = replace(template.clip, frames=frames, stride=config["stride"], size=size)
    name, options = model_of(config, budget.width)
    refusal = input_contract(name, **options).refusal(frames, size)
    if refusal:  # the space never draws this; a hand-written config can
        raise ValueError(f"{name} cannot take this configuration's clip: {refusal}")
    sizing = config.get(SIZING_KEY) or _sizing(name, options, frames, size, limits, budget)
    if "pruned" in sizing:
        return Pruned(sizing["pruned"])
    run = replace(
        template,
        model=name,
        model_options=options | template.model_options,
        clip=clip,
        batch_size=sizing["batch_size"],
        lr=config["lr"],
        weight_decay=config["weight_decay"],
    )
    return TrialPlan(
        run=run,
        gmacs=sizing["gmacs"],
        params_m=sizing["params_m"],
        memory_gib=sizing["memory_gib"],
        knobs=knobs(config),
    )


SEARCH_KEYS = (
    "family",
    "depth",
    "stm_stages",
    "stm_blocks",
    "frames",
    "size",
    "stride",
    "lr",
    "weight_decay",
)
