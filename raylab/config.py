"""The description of a run, one home for every setting.

A :class:`TrainConfig` (the network, its clips as a :class:`ClipConfig`, and the recipe) is
built once, by a job's flags or by the search's trial planner, and travels whole: to the
trainer and every Ray Train worker, into every checkpoint (:meth:`TrainConfig.record`), and
back out of it for evaluation, prediction, feature extraction and `jobs/train.py --config`
(:meth:`TrainConfig.from_record`, which fills nothing in). The clips are the data
layer's :class:`~raylab.data.clips.ClipConfig` (imported here too), which computes what
follows from them; the input normalisation of a modality is computed here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from raylab.data.clips import ClipConfig, check_choices, missing_settings

if TYPE_CHECKING:
    import torch

# Input normalisation of [0, 1] frames per channel: RGB as Kinetics-trained video networks
# use it; optical flow to [-1, 1] as I3D feeds it.
RGB_MEAN, RGB_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
FLOW_MEAN, FLOW_STD = (0.5, 0.5), (0.5, 0.5)


def env_int(name: str, default: int, least: int = 0) -> int:
    """The whole number the environment's ``name`` holds (``default`` when unset or empty);
    a clear error naming the variable when it holds anything else or less than ``least``."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = least - 1
    if number < least:
        raise ValueError(f"{name}={value!r}: set it to a whole number of at least {least}")
    return number


def normalise(clip: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, C) on the device -> normalised float (B, C, T, H, W)."""
    x = clip.permute(0, 4, 1, 2, 3).float().div_(255.0)
    return x.sub_(mean.view(1, -1, 1, 1, 1)).div_(std.view(1, -1, 1, 1, 1))


@dataclass(frozen=True)
class TrainConfig:
    """What a training run is: the network, the clips it sees and the recipe.

    Each setting's meaning is its field's ``metadata["help"]`` (with its ``choices``): the
    jobs' flags are made from them (:func:`raylab.jobs.add_config_flags`).
    """

    model: str = field(default="c3d", metadata={"help": "a name from raylab.models.MODEL_NAMES"})
    model_options: dict = field(
        default_factory=dict, metadata={"help": "build_model's options: width, head, dropout..."}
    )
    clip: ClipConfig = field(
        default_factory=ClipConfig, metadata={"help": "the clips the run trains and tests on"}
    )
    classes: tuple[str, ...] = field(
        default=(), metadata={"help": "the class names; (): those of the shards trained on"}
    )
    epochs: int = field(default=10, metadata={"help": "passes over the training videos"})
    workers: int = field(
        default=1,
        metadata={"help": "Ray Train workers (data-parallel: the batch is batch_size x workers)"},
    )
    batch_size: int = field(default=8, metadata={"help": "clips per worker and step"})
    optimizer: str = field(
        default="adamw",
        metadata={"help": "adamw, or sgd (Nesterov momentum)", "choices": ("sgd", "adamw")},
    )
    lr: float = field(default=1e-3, metadata={"help": "learning rate at the schedule's peak"})
    momentum: float = field(default=0.9, metadata={"help": "sgd's momentum"})
    weight_decay: float = field(
        default=1e-4, metadata={"help": "weight decay (not on norms and biases)"}
    )
    schedule: str = field(
        default="cosine",
        metadata={
            "help": "cosine after a linear warm-up, or step: lr / 10 every step_epochs (the "
            "T3D recipe)",
            "choices": ("cosine", "step"),
        },
    )
    warmup_epochs: float = field(
        default=1.0, metadata={"help": "epochs of the cosine schedule's linear warm-up"}
    )
    step_epochs: int = field(
        default=30, metadata={"help": "epochs between the step schedule's lr / 10 steps"}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "label smoothing of the cross-entropy loss"}
    )
    grad_accum: int = field(
        default=1, metadata={"help": "an optimiser step every N batches", "metavar": "N"}
    )
    clip_grad: float = field(
        default=0.0, metadata={"help": "the largest gradient norm; 0: no clipping"}
    )
    amp: str | bool = field(default="auto", metadata={"help": "bf16 autocast; auto: on CUDA only"})
    channels_last: str | bool = field(
        default="auto",
        metadata={"help": "channels_last_3d memory for 3D convolutions; auto: on CUDA only"},
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    mean: tuple[float, ...] | None = field(
        default=None,
        metadata={
            "help": "input normalisation mean per channel (default: the modality's, "
            "RGB_MEAN or FLOW_MEAN)"
        },
    )
    std: tuple[float, ...] | None = field(
        default=None,
        metadata={"help": "input normalisation std per channel (default: the modality's)"},
    )
    shuffle_buffer: int = field(
        default=64,
        metadata={"help": "videos of a worker's epoch plan shuffled together (a window)"},
    )
    seed: int = field(
        default=0,
        metadata={
            "help": "every random draw of the run: the initialisation, the epoch's plan of "
            "videos, each clip's start, crop and flip, and each rank's generator "
            "(raylab.train.epoch)"
        },
    )
    checkpoint_every: int = field(
        default=0,
        metadata={
            "help": "a mid-epoch checkpoint every STEPS steps, from which a killed worker "
            "resumes on exactly the clips it had not trained; 0: at epoch ends only",
            "metavar": "STEPS",
        },
    )
    deterministic: bool = field(
        default=False,
        metadata={
            "help": "CUDA: deterministic kernels where they exist, no cuDNN autotuner (slower)"
        },
    )
    flush_denormal: bool = field(
        default=True,
        metadata={
            "help": "CPU: flush denormal floats to zero (x86 FTZ/DAZ), where arithmetic on "
            "them is many times slower; no effect measured on the demo's T3D"
        },
    )
    init_from: str | None = field(
        default=None,
        metadata={"help": "plain state dict to start from (e.g. transferred T3D weights)"},
    )
    max_decode_failures: float = field(
        default=0.05,
        metadata={
            "help": "stop when more than this share of an epoch's training or validation "
            "videos cannot be decoded (or none can): a few damaged files cost only "
            "themselves, a dataset the decoder cannot read fails loudly instead of training "
            "on nothing",
            "metavar": "FRACTION",
        },
    )

    def __post_init__(self) -> None:
        flow = self.clip.modality == "flow"
        mean = self.mean if self.mean is not None else (FLOW_MEAN if flow else RGB_MEAN)
        std = self.std if self.std is not None else (FLOW_STD if flow else RGB_STD)
        object.__setattr__(self, "mean", tuple(mean))
        object.__setattr__(self, "std", tuple(std))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "model_options", dict(self.model_options))
        check_choices(self)
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0 steps, got {self.checkpoint_every}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def record(self) -> dict:
        """Every setting as plain JSON values: what each checkpoint keeps as its config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model_options"] = {
            k: list(v) if isinstance(v, tuple) else v for k, v in self.model_options.items()
        }
        out["clip"] = self.clip.record()
        for name in ("classes", "mean", "std"):
            out[name] = list(out[name])
        return out

    @classmethod
    def from_record(cls, record: dict) -> TrainConfig:
        """The run a checkpoint recorded; a clear error when it predates this record."""
        missing_settings(cls, record)
        values = {f.name: record[f.name] for f in fields(cls)}
        values["clip"] = ClipConfig.from_record(record["clip"])
        return cls(**values)
