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

from dataclasses import dataclass, field, fields

from raylab.data.clips import ClipConfig, missing_settings

# Input normalisation of [0, 1] frames per channel: RGB as Kinetics-trained video networks
# use it; optical flow to [-1, 1] as I3D feeds it.
RGB_MEAN, RGB_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
FLOW_MEAN, FLOW_STD = (0.5, 0.5), (0.5, 0.5)


@dataclass(frozen=True)
class TrainConfig:
    """What a training run is: the network, the clips it sees and the recipe."""

    model: str = "c3d"
    model_options: dict = field(default_factory=dict)  # build_model's: width, head, dropout...
    clip: ClipConfig = field(default_factory=ClipConfig)
    classes: tuple[str, ...] = ()  # the class names; () = those of the shards trained on
    epochs: int = 10
    workers: int = 1  # Ray Train workers (data-parallel: the batch is batch_size x workers)
    batch_size: int = 8  # clips per worker and step
    optimizer: str = "adamw"  # "adamw", or "sgd" (Nesterov momentum)
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4  # not on norms and biases
    schedule: str = "cosine"  # "cosine" after a linear warm-up, or "step": lr / 10 every ...
    warmup_epochs: float = 1.0
    step_epochs: int = 30  # ... step_epochs (the T3D recipe)
    label_smoothing: float = 0.0
    grad_accum: int = 1  # an optimiser step every N batches
    clip_grad: float = 0.0  # the largest gradient norm; 0 = no clipping
    amp: str | bool = "auto"  # bf16 autocast; "auto" = on CUDA only
    channels_last: str | bool = "auto"  # channels_last_3d for 3D convolutions; "auto" = CUDA
    compile: bool = False  # torch.compile the model
    mean: tuple[float, ...] | None = None  # per channel; None = the modality's (RGB_MEAN...)
    std: tuple[float, ...] | None = None
    shuffle_buffer: int = 64  # videos of a worker's epoch plan shuffled together (a window)
    # Every random draw of the run: the initialisation, the epoch's plan of videos, each
    # clip's start, crop and flip, and each rank's generator (raylab.train.epoch).
    seed: int = 0
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = at epoch ends only
    deterministic: bool = False  # CUDA: deterministic kernels where they exist, no autotuner
    init_from: str | None = None  # a plain state dict to start from (transferred weights)
    # The largest share of an epoch's training or validation videos that may fail to decode
    # before the run stops: a few damaged files cost only themselves, a dataset the decoder
    # cannot read fails loudly instead of training on nothing.
    max_decode_failures: float = 0.05

    def __post_init__(self) -> None:
        flow = self.clip.modality == "flow"
        mean = self.mean if self.mean is not None else (FLOW_MEAN if flow else RGB_MEAN)
        std = self.std if self.std is not None else (FLOW_STD if flow else RGB_STD)
        object.__setattr__(self, "mean", tuple(mean))
        object.__setattr__(self, "std", tuple(std))
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "model_options", dict(self.model_options))
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "step"):
            raise ValueError(f"schedule must be 'cosine' or 'step', got {self.schedule!r}")
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
