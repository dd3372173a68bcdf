"""T3D's supervision transfer (2D -> 3D): a frozen 2D DenseNet teaches a 3D student.

As in Diba et al. ("Temporal 3D ConvNets", section 3.2): a frozen 2D DenseNet
(ImageNet weights when given) sees X frames of a clip, and its pooled features are averaged
over them; the 3D student (``t3d121`` or ``densenet3d121``) sees the clip; a head reads both
and says whether they come from the same video at the same time stamp (positive) or the
frames come from another video (negative). No labels are needed: the student learns to
produce features from which the teacher's view of the same moment can be recognised.

Pieces:

- :class:`ClipPairs`, a ``map_batches`` step after :func:`raylab.data.pipeline.clip_dataset`:
  within each batch of decoded clips it emits, for every clip, one positive row (teacher
  frames = X evenly spaced frames of that clip) and one negative row (X frames of a clip of
  another video in the batch). Columns ``clip`` (student input, uint8 T x H x W x 3),
  ``teacher_clip`` (uint8 X x H x W x 3), ``same`` (1 / 0), ``kind`` (:data:`POSITIVE`,
  :data:`OTHER_SCENE` or :data:`SAME_SCENE`), ``video_id`` and ``teacher_video_id``. Only
  ``video_id`` tells videos apart; labels are never read (and dropped). :func:`pair_dataset`
  builds the whole dataset.
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
- :func:`transfer_loop`, the per-worker Ray Train loop (ordinary PyTorch, DDP through
  ``ray.train.torch.prepare_model``; AdamW with cosine decay by default), reporting
  ``train_loss`` and the held-out ``correspondence_accuracy`` (overall and per kind of pair:
  ``accuracy_positive``, ``accuracy_other_scene``, ``accuracy_same_scene``) with a
  checkpoint every epoch;
  :func:`build_transfer_trainer` the ``TorchTrainer`` around it;
  :func:`student_state` the student's weights without its classifier, which
  ``build_model(student, num_classes, ...)`` loads with ``strict=False`` (``jobs/train.py
  --init-from``).
"""

from __future__ import annotations

import math
import re
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylab.config import ClipConfig, TrainConfig
from raylab.data.pipeline import FAILED, ClipTensors
from raylab.train.loop import lr_factor, make_optimizer, normalise
from raylab.train.worker import (
    EpochReporter,
    autocast,
    gather,
    resume,
    train_batches,
    unwrap,
    worker_device,
    write_progress,
)

STUDENTS = ("t3d121", "densenet3d121")
POSITIVE, OTHER_SCENE, SAME_SCENE = 0, 1, 2  # the ``kind`` of a pair row
_GROUP = re.compile(r"_g(\d+)_c\d+$")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The recipe's defaults are training's (TrainConfig), and so is the student's normalisation
# (that of fine-tuning). model_options and num_classes are the student's; its classifier is
# built but unused (and not saved).
_TRAINING = TrainConfig()
DEFAULTS: dict = {
    name: getattr(_TRAINING, name)
    for name in (
        "model_options",
        "epochs",
        "optimizer",
        "lr",
        "momentum",
        "schedule",
        "warmup_epochs",
        "step_epochs",
        "amp",
        "mean",
        "std",
        "shuffle_buffer",
        "seed",
    )
} | {
    "num_classes": 8,  # the shards' count, set by the trainer's builder
    "steps_per_epoch": 1,  # set by the trainer's builder
    "run_dir": None,
    "student": "t3d121",
    "teacher_depth": 121,
    "teacher_weights": None,  # a torchvision DenseNet state dict (ImageNet) for the teacher
    "teacher_calibrated": False,  # True: a random teacher, BN statistics from training frames
    "head_hidden": (512, 128),
    "batch_size": 32,  # pair rows per worker (half positive)
    # AdamW with cosine decay, as training; the paper's SGD recipe (lr 0.1, / 10 every 30
    # epochs) is "sgd" + "step". On the demo set AdamW 1e-3, weight decay 0.05 was what made
    # tiny students learn at all.
    "weight_decay": 0.05,
    "teacher_mean": IMAGENET_MEAN,
    "teacher_std": IMAGENET_STD,
}


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


class ClipPairs:
    """``map_batches`` step: a batch of decoded clip rows -> positive and negative pair rows.

    For every clip i of the batch: ``(clip_i, frames of clip_i, same=1)`` and ``(clip_i,
    frames of clip_j, same=0)`` with j drawn among the clips of *other* videos of the batch;
    with probability ``hard_negatives`` among those of the same scene (:func:`scene_of`) when
    there are any. Clips of a batch holding a single video have no negative and are left out
    (so exactly half of the rows are positive); so are placeholder rows of videos that failed
    to decode (``view`` -1). Rows are shuffled within the batch. ``seed`` None draws from
    fresh entropy (training); an int makes the negatives a function of the batch's video ids
    (validation).
    """

    def __init__(
        self, teacher_frames: int, seed: int | None = None, hard_negatives: float = 0.5
    ) -> None:
        if not 0.0 <= hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be in [0, 1], got {hard_negatives}")
        self.teacher_frames, self.seed, self.hard = teacher_frames, seed, hard_negatives

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        clips = batch["clip"]
        ids = np.asarray([str(v) for v in batch["video_id"]], dtype=object)
        if "view" in batch:
            ok = np.asarray(batch["view"]) != FAILED
            clips, ids = clips[ok], ids[ok]
        idx = teacher_indices(clips.shape[1], self.teacher_frames)
        if self.seed is None:
            rng = np.random.default_rng()
        else:
            rng = np.random.default_rng([self.seed, zlib.crc32("|".join(ids).encode())])
        scenes = np.asarray([scene_of(v) for v in ids], dtype=object)
        student, partner, kind = [], [], []
        for i, vid in enumerate(ids):
            others = ids != vid
            if not others.any():
                continue
            same_scene = others & (scenes == scenes[i]) & (scenes[i] is not None)
            hard = same_scene.any() and rng.random() < self.hard
            j = int(rng.choice(np.flatnonzero(same_scene if hard else others)))
            student += [i, i]
            partner += [i, j]
            kind += [POSITIVE, SAME_SCENE if same_scene[j] else OTHER_SCENE]
        order = rng.permutation(len(kind))
        student = np.asarray(student, dtype=np.int64)[order]
        partner = np.asarray(partner, dtype=np.int64)[order]
        kind = np.asarray(kind, dtype=np.int64)[order]
        t, h, w, c = clips.shape[1:]
        return {
            "clip": clips[student] if len(student) else np.zeros((0, t, h, w, c), np.uint8),
            "teacher_clip": (
                clips[partner][:, idx]
                if len(partner)
                else np.zeros((0, len(idx), h, w, c), np.uint8)
            ),
            "same": (kind == POSITIVE).astype(np.int64),
            "kind": kind,
            "video_id": ids[student] if len(student) else np.zeros(0, dtype=object),
            "teacher_video_id": ids[partner] if len(partner) else np.zeros(0, dtype=object),
        }


def pair_dataset(
    shards: str | Path,
    split: str,
    clip: ClipConfig,
    *,
    teacher_frames: int = 4,
    hard_negatives: float = 0.5,
    train: bool = True,
    seed: int | None = None,
    videos_per_batch: int = 32,
    decoders: int | None = None,
    decoder_cpus: float = 1.0,
    decoder_resource: str | None = None,
):
    """A ``ray.data.Dataset`` of pair rows (see :class:`ClipPairs`) of ``clip``'s clips from
    one split.

    Training (``train=True``): random clips every pass, fresh negatives. Otherwise centre
    clips and negatives fixed by ``seed`` (0 when None), so a held-out accuracy is comparable
    from epoch to epoch. Negatives are drawn within a decode batch of ``videos_per_batch``
    videos (twice the pipeline's 16): the shards' rows are in random order, and a larger
    batch more often holds another video of the same scene for a hard negative.
    """
    import ray.data

    from raylab.data.pipeline import clip_dataset

    clips = clip_dataset(
        shards,
        split,
        clip,
        train=train,
        seed=seed if train else None,
        decoders=decoders,
        decoder_cpus=decoder_cpus,
        decoder_resource=decoder_resource,
        videos_per_batch=videos_per_batch,
    )
    pair_seed = seed if train else (0 if seed is None else seed)
    # Same batch size and resources as the decoder: Ray Data fuses both into one task.
    pairs = clips.map_batches(
        ClipPairs(teacher_frames, pair_seed, hard_negatives),
        batch_size=videos_per_batch,
        batch_format="numpy",
        compute=ray.data.TaskPoolStrategy(size=decoders),
        num_cpus=decoder_cpus,
        resources={decoder_resource: 1} if decoder_resource else None,
    )
    if not train:
        # Negatives are drawn within a decode batch, so fixed pairs need fixed batches: the
        # blocks must reach the decoder in the same order every pass. This dataset only.
        pairs.context.execution_options.preserve_order = True
    return pairs


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


def build_teacher(config: dict) -> FrameTeacher:
    """The frozen 2D DenseNet at the student's width, from ``teacher_weights`` when given."""
    from raylab.models.t3d import densenet2d

    width = config["model_options"].get("width", 1.0)
    net = densenet2d(config["teacher_depth"], width=width)
    if config["teacher_weights"]:
        load_teacher_weights(net, config["teacher_weights"])
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
    config: dict, shards: str, clip: ClipConfig, teacher_frames: int
) -> Path:
    """``run_dir/teacher.pt``: the seeded random teacher with BN statistics calibrated on
    ``teacher_frames`` frames of up to 16 training clips (written once, reused on resume)."""
    from raylab.data.pipeline import clip_dataset
    from raylab.models.t3d import densenet2d

    path = Path(config["run_dir"]) / "teacher.pt"
    if path.exists():
        return path
    rows = clip_dataset(shards, "train", clip, train=True, seed=config["seed"]).take(16)
    idx = teacher_indices(clip.frames, teacher_frames)
    sample = np.concatenate([r["clip"][idx] for r in rows if r["view"] != FAILED])
    torch.manual_seed(config["seed"])
    net = densenet2d(config["teacher_depth"], width=config["model_options"].get("width", 1.0))
    calibrate_teacher(net, sample, config["teacher_mean"], config["teacher_std"])
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


def build_transfer_net(config: dict, teacher_features: int) -> TransferNet:
    from raylab.models import build_model

    student = build_model(config["student"], config["num_classes"], **config["model_options"])
    # The student's classifier is never run here (nor saved): without gradients, DDP does not
    # wait for them, which with two or more workers would fail the first step.
    student.classifier.requires_grad_(False)
    head = CorrespondenceHead(teacher_features, feature_size(student), tuple(config["head_hidden"]))
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
# The per-worker loop
# --------------------------------------------------------------------------------------------


def transfer_loop(config: dict) -> None:
    """Train student + head on the ``train`` pairs, report held-out correspondence accuracy."""
    import ray.train
    import ray.train.torch

    config = DEFAULTS | config
    rank = ray.train.get_context().get_world_rank()
    device = worker_device()

    torch.manual_seed(config["seed"])  # every worker: the same teacher and student init
    teacher = build_teacher(config).to(device)
    net = build_transfer_net(config, teacher.out_features)
    net = ray.train.torch.prepare_model(net, move_to_device=device)  # device + DDP
    optimizer = make_optimizer(
        net, config["optimizer"], config["lr"], config["weight_decay"], config["momentum"]
    )
    schedule = {k: config[k] for k in ("epochs", "schedule", "warmup_epochs", "step_epochs")}
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step / max(1, config["steps_per_epoch"]), **schedule)
    )
    run_dir = config["run_dir"]
    start_epoch = resume(
        run_dir, rank, net=unwrap(net), teacher=teacher, optimizer=optimizer, scheduler=scheduler
    )

    def tensor(values):
        return torch.tensor(values, device=device)

    mean, std = tensor(config["mean"]), tensor(config["std"])
    t_mean, t_std = tensor(config["teacher_mean"]), tensor(config["teacher_std"])
    amp_ctx = autocast(config["amp"], device)
    reporter = EpochReporter(config, run_dir, rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")

    def logits_of(batch) -> torch.Tensor:
        with amp_ctx:
            feats = teacher(teacher_input(batch["teacher_clip"], t_mean, t_std))
            return net(normalise(batch["clip"], mean, std), feats.float()).float()

    def checkpoint(_epoch: int) -> dict:
        """What the loop saves; the reporter adds the epoch, config and metrics."""
        return {
            "net": unwrap(net).state_dict(),
            "teacher": teacher.state_dict(),
            "student": student_state(net),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
        }

    for epoch in range(start_epoch, config["epochs"]):
        net.train()
        write_progress(run_dir, rank, epoch)
        loss_sum = correct = seen = 0
        start = time.perf_counter()
        batches = train_batches(train_shard, config["batch_size"], config["shuffle_buffer"], device)
        for step, batch in enumerate(batches, start=1):
            y = batch["same"]
            logits = logits_of(batch)
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            write_progress(run_dir, rank, epoch, step=step)
        train_time = time.perf_counter() - start

        net.eval()
        v_loss = v_correct = v_seen = v_pos = 0
        by_kind = [0] * 6  # correct and seen for POSITIVE, OTHER_SCENE, SAME_SCENE
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(
                batch_size=config["batch_size"], collate_fn=ClipTensors(), device=device
            ):
                y = batch["same"]
                logits = logits_of(batch)
                right = logits.argmax(1) == y
                v_loss += F.cross_entropy(logits, y, reduction="sum").item()
                v_correct += right.sum().item()
                v_seen += len(y)
                v_pos += int(y.sum().item())
                for k in (POSITIVE, OTHER_SCENE, SAME_SCENE):
                    of_kind = batch["kind"] == k
                    by_kind[2 * k] += right[of_kind].sum().item()
                    by_kind[2 * k + 1] += of_kind.sum().item()
        totals = gather(
            (loss_sum, correct, seen, train_time, v_loss, v_correct, v_seen, v_pos, *by_kind)
        )
        n_train = sum(t[2] for t in totals)
        n_val = sum(t[6] for t in totals)
        metrics = {
            "epoch": epoch + 1,
            "train_loss": sum(t[0] for t in totals) / max(1, n_train),
            "train_accuracy": sum(t[1] for t in totals) / max(1, n_train),
            "train_pairs": n_train,
            "pairs_per_s": n_train / max(1e-9, max(t[3] for t in totals)),
            "correspondence_accuracy": (
                sum(t[5] for t in totals) / n_val if n_val else float("nan")
            ),
            "val_loss": sum(t[4] for t in totals) / n_val if n_val else float("nan"),
            "val_pairs": n_val,
            "val_positive_fraction": sum(t[7] for t in totals) / max(1, n_val),
            # Held-out accuracy on each kind of pair (nan where there was none of that kind).
            **{
                f"accuracy_{name}": (
                    sum(t[8 + 2 * k] for t in totals) / n
                    if (n := sum(t[9 + 2 * k] for t in totals))
                    else float("nan")
                )
                for k, name in enumerate(("positive", "other_scene", "same_scene"))
            },
            "lr": optimizer.param_groups[0]["lr"],
        }
        reporter.end_epoch(epoch, metrics, epoch_line(metrics, config["epochs"]), checkpoint)
    reporter.close()


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


def check_networks(config: dict, clip: ClipConfig, teacher_frames: int) -> None:
    """Build teacher, student and head on the meta device and run one pair of the run's shape,
    so a wrong name, option or clip size fails on the driver with the model's message."""
    config = DEFAULTS | config
    if config["student"] not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {config['student']!r}")
    with torch.device("meta"):
        teacher = build_teacher(config | {"teacher_weights": None})
        net = build_transfer_net(config, teacher.out_features).eval()
        feats = teacher(torch.empty(1, teacher_frames, 3, clip.size, clip.size))
        net(torch.empty(1, 3, clip.frames, clip.size, clip.size), feats)


def build_transfer_trainer(
    config: dict,
    *,
    shards: str,
    clip: ClipConfig,
    teacher_frames: int = 4,
    storage_path: str | Path,
    name: str,
    workers: int = 1,
    use_gpu: bool = False,
    cpus_per_worker: float = 1.0,
    max_failures: int = 1,
    decoders: int | None = None,
    val_split: str = "val",
    hard_negatives: float = 0.5,
):
    """A ``TorchTrainer`` running :func:`transfer_loop` over train / held-out pair datasets
    of ``clip``'s clips (recorded whole in the config every checkpoint keeps).

    Keeps the best two checkpoints by ``correspondence_accuracy`` (and the latest); calling
    ``fit()`` again with the same storage path and name resumes.
    """
    from raylab.data.storage import load_manifest
    from raylab.train.trainer import torch_trainer

    manifest = load_manifest(shards)
    n_train = manifest["splits"].get("train", 0)
    if n_train == 0:
        raise ValueError(f"{shards} holds no training videos")
    if manifest["splits"].get(val_split, 0) == 0:
        raise ValueError(f"{shards} holds no {val_split!r} videos for the held-out accuracy")
    config = DEFAULTS | config
    config["num_classes"] = len(manifest.get("classes") or []) or config["num_classes"]
    config["clip"] = clip.record()
    check_networks(config, clip, teacher_frames)
    config["steps_per_epoch"] = max(1, math.ceil(2 * n_train / workers / config["batch_size"]))
    config["run_dir"] = config["run_dir"] or str(Path(storage_path) / name)
    if not config["teacher_weights"]:  # a random teacher: BN statistics from training frames
        config["teacher_weights"] = str(
            calibrated_teacher_file(config, shards, clip, teacher_frames)
        )
        config["teacher_calibrated"] = True
    common = {
        "teacher_frames": teacher_frames,
        "hard_negatives": hard_negatives,
        "decoders": decoders,
    }
    datasets = {
        "train": pair_dataset(shards, "train", clip, train=True, **common),
        "val": pair_dataset(shards, val_split, clip, train=False, seed=config["seed"], **common),
    }
    return torch_trainer(
        transfer_loop,
        config,
        datasets,
        storage_path=storage_path,
        name=name,
        workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=cpus_per_worker,
        max_failures=max_failures,
        keep_checkpoints=2,
        metric="correspondence_accuracy",
    )
