"""One experiment's options (:class:`TuneOptions`), where they are kept and how they are
read back: the search's driver, its resource planning and its results all take them from
here.

``options.json`` beside the Optuna study holds them: ``--resume`` and the report read it.
With results on a URI (s3://...) the study and options stay on this machine, under
``$RAYLAB_HOME/studies/NAME`` (:func:`options_dir`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from raylab.config import ClipConfig, TrainConfig
from raylab.data.clips import TSN_SCALES
from raylab.data.storage import is_uri, raylab_home
from raylab.tune.space import SearchSpace

STUDY_FILE = "optuna.db"
SEARCHERS = ("tpe", "random")
EARLY_STOPPING = ("asha", "none")


@dataclass
class TuneOptions:
    """One experiment: where the data and results are, how much to search, how trials run."""

    shards: str
    storage_path: str
    name: str
    space: SearchSpace = field(default_factory=SearchSpace)
    num_samples: int = 20
    max_epochs: int = 10  # ASHA's max_t: epochs of a trial that is never stopped
    grace_period: int = 1  # epochs before ASHA may stop a trial
    reduction_factor: int = 3
    width: float = 1.0  # channel multiplier of every network
    max_batch: int = 16  # per worker; lowered to what the memory estimate allows
    memory_gib: float | None = None  # per worker; None: the GPU's, or a share of free RAM
    workers: int = 1  # Train workers per trial
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    decoder_cpus: float = 1.0
    decoder_resource: str | None = None  # custom resource of decoder nodes (cluster.yaml)
    concurrency: int | None = None  # trials at once; None: as the cluster's CPUs/GPUs allow
    val_clips: int = 1
    seed: int = 0
    searcher: str = "tpe"  # Optuna's sampler: "tpe" or "random"
    early_stopping: str = "asha"  # "asha", or "none": every trial trains max_epochs
    # The search ends once its trials have trained this many epochs in all (the epoch that
    # reaches it counts; the trial running then is stopped): work, not seconds, so a search
    # run one trial at a time is a function of its seed and data, whatever the machine's pace.
    budget_epochs: int | None = None
    time_budget_s: float | None = None  # stop starting and running trials after this long
    dropout: float | None = None  # before every network's classifier; None: the model's
    stop_at_chance_after: int | None = None  # epochs; a trial still at chance then stops
    crop_scales: tuple[float, ...] = TSN_SCALES  # training crop sides / short side

    def __post_init__(self) -> None:
        if self.searcher not in SEARCHERS:
            raise ValueError(f"searcher must be one of {SEARCHERS}, got {self.searcher!r}")
        if self.early_stopping not in EARLY_STOPPING:
            raise ValueError(
                f"early_stopping must be one of {EARLY_STOPPING}, got {self.early_stopping!r}"
            )
        self.crop_scales = tuple(self.crop_scales)
        if self.budget_epochs is not None and self.budget_epochs < 1:
            raise ValueError(f"budget_epochs must be at least 1, got {self.budget_epochs}")

    @property
    def experiment_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def local(self) -> bool:
        return not is_uri(self.storage_path)

    @property
    def study_path(self) -> Path:
        """The SQLite study (and ``options.json`` beside it): see :func:`options_dir`."""
        return options_dir(self.storage_path, self.name) / STUDY_FILE

    def trial_template(self) -> TrainConfig:
        """What every trial trains but the drawn knobs (network, frames, stride, size, lr,
        weight decay) and the batch its memory allows: ``space.plan_trial`` fills those in."""
        return TrainConfig(
            model_options={} if self.dropout is None else {"dropout": self.dropout},
            clip=ClipConfig(crop_scales=self.crop_scales, test_clips=self.val_clips),
            epochs=self.max_epochs,
            workers=self.workers,
            optimizer="adamw",
            seed=self.seed,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["space"] = self.space.to_dict()
        return out


def options_dir(storage_path: str, name: str) -> Path:
    """The local folder of an experiment's study and options: the experiment folder, or
    ``$RAYLAB_HOME/studies/NAME`` (``~/raylab``) when results go to a URI."""
    if not is_uri(storage_path):
        return Path(storage_path) / name
    return raylab_home() / "studies" / name


def save_options(options: TuneOptions) -> None:
    """``options.json`` beside the study: what ``--resume`` and the report read back."""
    path = options.study_path.parent / "options.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    # The trials' template is derived from the options, saved for the reader who asks what
    # a trial trains; loading ignores it.
    record = options.to_dict() | {"trial_template": options.trial_template().record()}
    path.write_text(json.dumps(record, indent=2))


def load_options(storage_path: str, name: str) -> TuneOptions:
    """The options an experiment was started with."""
    path = options_dir(storage_path, name) / "options.json"
    if not path.exists():
        raise FileNotFoundError(f"no experiment {name!r} under {storage_path} ({path} is missing)")
    raw = json.loads(path.read_text())
    raw.pop("trial_template", None)
    space = SearchSpace(**{k: tuple(v) for k, v in raw.pop("space").items()})
    return TuneOptions(space=space, **raw)
