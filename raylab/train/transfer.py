"""T3D's supervision transfer (2D -> 3D): a frozen 2D DenseNet teaches a 3D student.

As in Diba et al. ("Temporal 3D ConvNets", section 3.2): a frozen 2D DenseNet
(ImageNet weights when given) sees X frames of a clip, and its pooled features are averaged
over them; the 3D student (``t3d121`` or ``densenet3d121``) sees the clip; a head reads both
and says whether they come from the same video at the same time stamp (positive) or the
frames come from another video (negative). No labels are needed: the student learns to
produce features from which the teacher's view of the same moment can be recognised.

Pieces:

- :func:`pair_indices`: within each training batch of decoded clips (the run's plan, as
  supervised training reads it), one positive pair per clip (teacher frames = X evenly
  spaced frames of that clip) and one negative (X frames of a clip of another video in the
  batch), drawn from the step's generator: the pairs are a function of the run's seed.
  Only video ids tell videos apart; labels are never read. Validation pairs are drawn from
  the seed and the batch's place, so they are the same every epoch and every run.
- Hard negatives: a negative from a video of another scene can be told apart by its
  background alone, which teaches the student nothing about what moves. Where video ids name
  their scene (UCF101's groups, ``v_<Class>_g<GG>_c<CC>``: one actor and place), a fraction
  ``hard_negatives`` (half by default) of the negatives comes from another video of the same
  scene when the batch holds one. On the demo set, students trained with only other-scene
  negatives matched the teacher best yet fine-tuned worst (``benchmarks/transfer.py``).
- :class:`FrameTeacher`: the frozen 2D DenseNet over X frames -> mean pooled feature. Without
  ImageNet weights the teacher is random, its BatchNorm statistics set from frames of the
  training split (:func:`calibrate_teacher`; a fresh BN leaves the deep network un-normalised)
  and saved as ``run_dir/teacher.pt``, so every worker and every resume uses the same one.
- :class:`CorrespondenceHead`: concat(teacher, student) -> fc 512 -> ReLU -> fc 128 -> ReLU ->
  fc 2. The two feature vectors are concatenated at whatever sizes they have, with no
  projection: 1024 + 1024 = 2048 at full width as in the paper, 128 + 128 at ``width=0.125``.
- :class:`TransferNet`: student + head, the trainable part that DDP wraps.
- :class:`Correspondence`, the task that supervised training's epoch skeleton
  (:mod:`raylab.train.epoch`) runs: the same plan, accumulation, clipping, decode checks,
  mid-epoch checkpoints and reports; it reports ``train_loss`` and the held-out
  ``correspondence_accuracy`` (overall and per kind of pair: ``accuracy_positive``,
  ``accuracy_other_scene``, ``accuracy_same_scene``) every epoch. The run is a
  :class:`~raylab.config.TrainConfig` (:func:`transfer_config`, the student as its model)
  and :class:`TransferOptions`; :func:`build_transfer_trainer` builds the ``TorchTrainer``;
  :func:`student_state` the student's weights without its classifier, which
  ``build_model(student, num_classes, ...)`` loads with ``strict=False`` (``jobs/train.py
  --init-from``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylab.config import TrainConfig, normalise
from raylab.data.pipeline import FAILED, error_text
from raylab.data.storage import Shards, is_uri
from raylab.train.epoch import DataOptions, loop_config, run_epochs
from raylab.train.worker import autocast, gather, unwrap

STUDENTS = ("t3d121", "densenet3d121")
POSITIVE, OTHER_SCENE, SAME_SCENE = 0, 1, 2  # the ``kind`` of a pair row
_GROUP = re.compile(r"_g(\d+)_c\d+$")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------------------------
# Pairs
# --------------------------------------------------------------------------------------------


def teacher_indices(frames: int, count: int) -> np.ndarray:
    """``count`` evenly spaced frame indices of a ``frames``-frame clip (first and last kept)."""
    if count < 1:
        raise ValueError(f"teacher frames must be >= 1, got {count}")
    return np.linspace(0, frames - 1, count).round().astype(np.int64)


def scene_of(video_id: str) -> str | None:
    """The scene a video id names, or None: its UCF101-style group (``.../v_Class_g08_c03`` ->
    ``g08``). In the demo set a group is one background and object in every class; in UCF101
    it is one actor and place within a class, so there a "same scene" negative from another
    class is merely another video."""
    match = _GROUP.search(str(video_id))
    return f"g{int(match.group(1)):02d}" if match else None


def pair_indices(
    ids: list[str], rng: np.random.Generator, hard_negatives: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of a batch of clips: ``(student, partner, kind)`` indices into ``ids``.

    For every clip i: ``(i, i, POSITIVE)`` and ``(i, j, kind)`` with j drawn among the clips
    of *other* videos of the batch; with probability ``hard_negatives`` among those of the
    same scene (:func:`scene_of`) when there are any. A clip whose video is the batch's only
    one has no negative and is left out (so exactly half of the pairs are positive). Labels
    are never read. The draws come from ``rng`` (the step's, in training; fixed ones at
    validation)."""
    if not 0.0 <= hard_negatives <= 1.0:
        raise ValueError(f"hard_negatives must be in [0, 1], got {hard_negatives}")
    ids_arr = np.asarray([str(v) for v in ids], dtype=object)
    scenes = np.asarray([scene_of(v) for v in ids_arr], dtype=object)
    student, partner, kind = [], [], []
    for i, vid in enumerate(ids_arr):
        others = ids_arr != vid
        if not others.any():
            continue
        same_scene = others & (scenes == scenes[i]) & (scenes[i] is not None)
        hard = same_scene.any() and rng.random() < hard_negatives
        j = int(rng.choice(np.flatnonzero(same_scene if hard else others)))
        student += [i, i]
        partner += [i, j]
        kind += [POSITIVE, SAME_SCENE if same_scene[j] else OTHER_SCENE]
    as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return as_array(student), as_array(partner), as_array(kind)


@dataclass(frozen=True)
class TransferOptions:
    """What supervision transfer adds to a run's :class:`~raylab.config.TrainConfig` (whose
    ``model`` is the student, its classifier built but unused and not saved)."""

    teacher_frames: int = 4  # frames of a clip the 2D teacher sees
    hard_negatives: float = 0.5  # negatives from another video of the same scene
    teacher_depth: int = 121
    teacher_weights: str | None = None  # a torchvision DenseNet state dict (ImageNet)
    teacher_calibrated: bool = False  # a random teacher, BN statistics from training frames
    head_hidden: tuple[int, ...] = (512, 128)
    teacher_mean: tuple[float, ...] = IMAGENET_MEAN
    teacher_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        teacher_indices(2, self.teacher_frames)  # its own check of the count
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be in [0, 1], got {self.hard_negatives}")
        for name in ("head_hidden", "teacher_mean", "teacher_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def record(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def transfer_config(**settings) -> TrainConfig:
    """The run of a transfer: training's recipe with transfer's defaults, a T3D-121 student,
    16 videos a step (32 pairs) and AdamW with weight decay 0.05 (the paper's SGD recipe,
    lr 0.1 / 10 every 30 epochs, is ``optimizer="sgd", schedule="step"``; on the demo set
    AdamW 1e-3 with decay 0.05 was what made tiny students learn at all)."""
    return replace(TrainConfig(model="t3d121", batch_size=16, weight_decay=0.05), **settings)


# --------------------------------------------------------------------------------------------
# Networks
# --------------------------------------------------------------------------------------------


class FrameTeacher(nn.Module):
    """A frozen 2D network over X frames: (B, X, 3, H, W) -> the mean of its pooled features.

    Always in eval mode (``train()`` keeps it there), no parameter requires a gradient.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.net.eval()

    def train(self, mode: bool = True) -> FrameTeacher:  # noqa: ARG002 - frozen: always eval
        return super().train(False)

    @property
    def out_features(self) -> int:
        return self.net.out_features

    @torch.no_grad()
    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, x = frames.shape[:2]
        feats = self.net.forward_features(frames.flatten(0, 1))
        return feats.view(b, x, -1).mean(1)


class CorrespondenceHead(nn.Module):
    """concat(teacher, student) -> fc 512 -> ReLU -> fc 128 -> ReLU -> fc 2 (same / not).

    The features are concatenated at their own sizes (no projection): 1024 + 1024 for
    DenseNet-121 at full width, as in the paper; fewer at smaller widths.
    """

    def __init__(
        self, teacher_features: int, student_features: int, hidden: tuple[int, ...] = (512, 128)
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        size = teacher_features + student_features
        for h in hidden:
            layers += [nn.Linear(size, h), nn.ReLU(inplace=True)]
            size = h
        layers.append(nn.Linear(size, 2))
        self.mlp = nn.Sequential(*layers)

    def forward(self, teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([teacher, student], 1))


class TransferNet(nn.Module):
    """The trainable part: the 3D student and the head. ``forward(clip, teacher_features)``
    -> logits (B, 2); class 1 = same video and time stamp."""

    def __init__(self, student: nn.Module, head: CorrespondenceHead) -> None:
        super().__init__()
        self.student, self.head = student, head

    def forward(self, clip: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
        return self.head(teacher_features, self.student.forward_features(clip))


def feature_size(model: nn.Module) -> int:
    """The size of ``forward_features``' output: the classifier's input."""
    if hasattr(model, "out_features"):
        return int(model.out_features)
    return int(model.classifier.in_features)


def build_teacher(options: TransferOptions, width: float = 1.0) -> FrameTeacher:
    """The frozen 2D DenseNet at the student's ``width``, from ``teacher_weights`` when given."""
    from raylab.models.t3d import densenet2d

    net = densenet2d(options.teacher_depth, width=width)
    if options.teacher_weights:
        load_teacher_weights(net, options.teacher_weights)
    return FrameTeacher(net)


def load_teacher_weights(net: nn.Module, path: str | Path) -> None:
    """A torchvision DenseNet state dict (old "norm.1"-style keys too) into the teacher; every
    backbone key must fit (the classifier may have another class count)."""
    from raylab.models.checkpoints import densenet_key, read_state

    state = {densenet_key(k): v for k, v in read_state(path).items()}
    own = net.state_dict()
    bad = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape and not k.startswith("classifier.")
    ]
    missing = [k for k in own if k not in state and not k.startswith("classifier.")]
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if bad or missing:
        raise ValueError(
            f"teacher weights {path} do not fit densenet at this width "
            f"(ImageNet weights need --width 1): mismatched {bad[:3]}, missing {missing[:3]}"
        )
    state = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    net.load_state_dict(state, strict=False)


@torch.no_grad()
def calibrate_teacher(
    net: nn.Module, frames: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD
) -> nn.Module:
    """Set the BatchNorm statistics of a randomly initialised 2D teacher from real frames
    (uint8 N x H x W x 3), in one batch: fresh running statistics (mean 0, variance 1) leave a
    deep DenseNet un-normalised in eval mode (pooled features ~1e4 at width 1/8), so a teacher
    without ImageNet weights gets the statistics of the training frames instead. Eval mode."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)
    x = x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one batch gives exactly its statistics
    net.train()
    net.forward_features(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return net.eval()


def calibrated_teacher_file(
    config: TrainConfig, options: TransferOptions, shards: str | Shards, run_dir: Path
) -> Path:
    """``run_dir/teacher.pt``: the seeded random teacher with BN statistics calibrated on
    ``teacher_frames`` frames of the first 16 training clips of the seed's first epoch
    (written once, reused on resume)."""
    from raylab.data.pipeline import clip_dataset
    from raylab.models.t3d import densenet2d

    path = run_dir / "teacher.pt"
    if path.exists():
        return path
    clip = config.clip
    rows = clip_dataset(shards, "train", clip, train=True, seed=config.seed).take(16)
    idx = teacher_indices(clip.frames, options.teacher_frames)
    sample = np.concatenate([r["clip"][idx] for r in rows if r["view"] != FAILED])
    torch.manual_seed(config.seed)
    net = densenet2d(options.teacher_depth, width=config.model_options.get("width", 1.0))
    calibrate_teacher(net, sample, options.teacher_mean, options.teacher_std)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def build_transfer_net(
    config: TrainConfig, options: TransferOptions, teacher_features: int
) -> TransferNet:
    """The student ``config.model`` and the head after the teacher's features."""
    from raylab.models import build_model

    student = build_model(config.model, max(1, config.num_classes), **config.model_options)
    # The student's classifier is never run here (nor saved): without gradients, DDP does not
    # wait for them, which with two or more workers would fail the first step.
    student.classifier.requires_grad_(False)
    head = CorrespondenceHead(teacher_features, feature_size(student), options.head_hidden)
    return TransferNet(student, head)


def student_state(net: TransferNet) -> dict[str, torch.Tensor]:
    """The student's weights as a plain state dict, its classifier left out: the keys of
    ``build_model(student, ...)`` but ``classifier.*``."""
    return {
        k: v.detach().cpu().clone()
        for k, v in unwrap(net).student.state_dict().items()
        if not k.startswith("classifier.")
    }


def teacher_input(frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, X, H, W, 3) -> normalised float (B, X, 3, H, W)."""
    x = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)
    return x.sub_(mean.view(1, 1, -1, 1, 1)).div_(std.view(1, 1, -1, 1, 1))


# --------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------


class Correspondence:
    """The :class:`~raylab.train.epoch.Task` of supervision transfer: each batch of decoded
    clips becomes its pairs (:func:`pair_indices`), the frozen teacher sees the partner's
    frames, and student + head say whether the two are the same moment."""

    unit, accuracy = "pairs", "train_accuracy"

    def __init__(self, config: TrainConfig, options: TransferOptions, rank: int) -> None:
        self.config, self.options, self.rank = config, options, rank

    def build(self, config: TrainConfig, device: torch.device) -> TransferNet:
        self.teacher = build_teacher(self.options, config.model_options.get("width", 1.0))
        self.teacher = self.teacher.to(device)
        net = build_transfer_net(config, self.options, self.teacher.out_features)

        def tensor(values) -> torch.Tensor:
            return torch.tensor(values, device=device)

        self.mean, self.std = tensor(config.mean), tensor(config.std)
        self.t_mean, self.t_std = (
            tensor(self.options.teacher_mean),
            tensor(self.options.teacher_std),
        )
        self.frames = torch.from_numpy(
            teacher_indices(config.clip.frames, self.options.teacher_frames)
        ).to(device)
        self.amp, self.device = autocast(config.amp, device), device
        return net

    def parts(self) -> dict:
        return {"teacher": self.teacher}

    def pairs(self, model, clips: torch.Tensor, ids, draw) -> tuple[torch.Tensor, ...]:
        """(logits, same, kind) of the pairs of a batch of uint8 clips on the device."""
        student, partner, kind = pair_indices(list(ids), draw, self.options.hard_negatives)
        s = torch.from_numpy(student).to(self.device)
        p = torch.from_numpy(partner).to(self.device)
        kind_t = torch.from_numpy(kind).to(self.device)
        with self.amp:
            frames = clips[p][:, self.frames]
            feats = self.teacher(teacher_input(frames, self.t_mean, self.t_std))
            logits = model(normalise(clips[s], self.mean, self.std), feats.float()).float()
        return logits, (kind_t == POSITIVE).long(), kind_t

    def forward(self, model, batch: dict[str, torch.Tensor], ids, draw) -> tuple[torch.Tensor, ...]:
        logits, same, _ = self.pairs(model, batch["clip"], ids, draw)
        return logits, same

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict:
        """Held-out correspondence accuracy, overall and per kind of pair, on fixed pairs
        (each batch's draws come from the seed and the batch's place)."""
        loss = correct = seen = positive = 0
        by_kind = [0] * 6  # correct and seen for POSITIVE, OTHER_SCENE, SAME_SCENE
        failed, first_error, videos = 0, "", 0
        for i, batch in enumerate(batches):
            ok = batch["label"] >= 0  # placeholder rows of videos that failed to decode
            failed += int((~ok).sum())
            videos += int(ok.sum())
            if not first_error and not ok.all():
                first_error = error_text(batch["error"][~ok][0])
            if not ok.any():
                continue
            clips = torch.from_numpy(batch["clip"][ok]).to(self.device)
            draw = np.random.default_rng([self.config.seed, self.rank, i])
            logits, same, kind = self.pairs(model, clips, batch["video_id"][ok], draw)
            right = logits.argmax(1) == same
            loss += F.cross_entropy(logits, same, reduction="sum").item()
            correct += right.sum().item()
            seen += len(same)
            positive += int(same.sum().item())
            for k in (POSITIVE, OTHER_SCENE, SAME_SCENE):
                of_kind = kind == k
                by_kind[2 * k] += right[of_kind].sum().item()
                by_kind[2 * k + 1] += of_kind.sum().item()
        totals = gather((loss, correct, seen, positive, failed, videos, first_error, *by_kind))
        n = sum(t[2] for t in totals)
        return {
            "correspondence_accuracy": sum(t[1] for t in totals) / n if n else float("nan"),
            "val_loss": sum(t[0] for t in totals) / n if n else float("nan"),
            "val_pairs": n,
            "val_positive_fraction": sum(t[3] for t in totals) / max(1, n),
            # Held-out accuracy on each kind of pair (nan where there was none of that kind).
            **{
                f"accuracy_{name}": (
                    sum(t[7 + 2 * k] for t in totals) / m
                    if (m := sum(t[8 + 2 * k] for t in totals))
                    else float("nan")
                )
                for k, name in enumerate(("positive", "other_scene", "same_scene"))
            },
            "val_videos": sum(t[5] for t in totals),
            "val_decode_failures": sum(t[4] for t in totals),
            "val_first_error": next((t[6] for t in totals if t[6]), ""),
        }

    def saved(self, model) -> dict:
        return {"student": student_state(model)}

    def line(self, metrics: dict, epochs: int) -> str:
        return epoch_line(metrics, epochs)


def transfer_loop(run: dict) -> None:
    """Train student + head (``run`` as :func:`build_transfer_trainer` makes it) on the
    training split's pairs, reporting held-out correspondence accuracy."""
    import ray.train

    config = TrainConfig.from_record(run["config"])
    options = TransferOptions(**run["transfer"])
    run_epochs(run, Correspondence(config, options, ray.train.get_context().get_world_rank()))


def epoch_line(metrics: dict, epochs: int) -> str:
    """The console line of an epoch of transfer."""
    return (
        f"epoch {metrics['epoch']}/{epochs}  loss {metrics['train_loss']:.3f}  "
        f"train acc {metrics['train_accuracy']:.3f}  correspondence acc "
        f"{metrics['correspondence_accuracy']:.3f} ({metrics['val_pairs']} val pairs)  "
        f"{metrics['pairs_per_s']:.1f} pairs/s"
    )


# --------------------------------------------------------------------------------------------
# The driver side
# --------------------------------------------------------------------------------------------


def check_networks(config: TrainConfig, options: TransferOptions) -> None:
    """Build teacher, student and head on the meta device and run one pair of the run's shape,
    so a wrong name, option or clip size fails on the driver with the model's message."""
    if config.model not in STUDENTS:
        raise ValueError(f"the student must be one of {STUDENTS}, got {config.model!r}")
    clip = config.clip
    with torch.device("meta"):
        meta = replace(options, teacher_weights=None)
        teacher = build_teacher(meta, config.model_options.get("width", 1.0))
        net = build_transfer_net(config, meta, teacher.out_features).eval()
        feats = teacher(torch.empty(1, options.teacher_frames, 3, clip.size, clip.size))
        net(torch.empty(1, 3, clip.frames, clip.size, clip.size), feats)


def build_transfer_trainer(
    config: TrainConfig,
    options: TransferOptions,
    data: DataOptions,
    *,
    storage_path: str | Path,
    name: str,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    log_steps: bool = False,
):
    """A ``TorchTrainer`` running :func:`transfer_loop` on ``config.workers`` workers: the
    student ``config.model`` learns from the pairs of the training split's clips, scored
    on the fixed pairs of ``data.val_split``.

    Keeps the best two checkpoints by ``correspondence_accuracy`` (and the latest); calling
    ``fit()`` again with the same storage path and name resumes, mid-epoch too when
    ``config.checkpoint_every`` is set.
    """
    from raylab.train.trainer import torch_trainer

    shards = Shards.open(data.shards)  # read once: the workers are given it
    data = replace(data, shards=shards)
    manifest = shards.manifest
    if manifest.videos("train") == 0:
        raise ValueError(f"{shards} holds no training videos")
    if manifest.videos(data.val_split) == 0:
        raise ValueError(f"{shards} holds no {data.val_split!r} videos for the held-out accuracy")
    config = replace(config, classes=manifest.classes)
    check_networks(config, options)
    run_dir = None if is_uri(storage_path) else str(Path(storage_path) / name)
    if not options.teacher_weights:  # a random teacher: BN statistics from training frames
        if run_dir is None:
            raise ValueError(
                "a calibrated random teacher needs a local run folder: give --teacher-weights"
            )
        teacher = calibrated_teacher_file(config, options, shards, Path(run_dir))
        options = replace(options, teacher_weights=str(teacher), teacher_calibrated=True)
    run = loop_config(
        config,
        data,
        run_dir,
        history_at=f"{str(storage_path).rstrip('/')}/{name}",  # on a URI too, as training
        mid_epoch_dir=f"{str(storage_path).rstrip('/')}/{name}/mid_epoch",
        log_steps=log_steps,
    )
    return torch_trainer(
        transfer_loop,
        run | {"transfer": options.record()},
        storage_path=storage_path,
        name=name,
        workers=config.workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        keep_checkpoints=2,
        metric="correspondence_accuracy",
    )
