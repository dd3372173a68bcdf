"""A trained network as a generic video descriptor: one feature vector per video.

As in the C3D paper (Tran et al., ICCV 2015, section 4): the activations of one layer (C3D's
fc6) are extracted for several clips of every video, averaged over the clips and
L2-normalised; :mod:`raylab.infer.analysis` then trains a linear SVM on them, measures their
compactness after PCA and draws a t-SNE plot.

:func:`extract_features` is Ray Data batch inference, like
:func:`raylab.infer.evaluate.predict`: the multi-view clip dataset of every split flows
through a pool of :class:`FeatureExtractor` actors (GPU or CPU), each running the model with
a hook on the chosen layer.

A layer is named as in ``model.named_modules()``, with optional suffixes::

    classifier.fc6            the module's output, flattened per clip
    fc6                       the same, when exactly one module name ends in ".fc6"
    fc:input                  the module's input instead of its output
    fc:input:pool             ... averaged over every axis but channels (one vector per clip)

``pool`` also averages per-frame rows (TSN and STM fold time into the batch) into one row
per clip. The default (:func:`default_layer`) is C3D's ``classifier.fc6`` where the model has
one, else the pooled input of the model's final classifier, which exists in every model of
the zoo.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from raylab.config import RGB_MEAN, RGB_STD, ClipConfig, normalise
from raylab.data.storage import Shards
from raylab.infer.batch import InferenceResources, batches, test_views, through_model
from raylab.train.checkpoints import load_checkpoint, read_weights

_CAPTURES = ("input", "pool")

# --------------------------------------------------------------------------------------------
# Which model, which layer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """The network to describe clips with: a training checkpoint, or a zoo model by name.

    ``checkpoint``: a checkpoint folder (or its ``state.pt``) written by the training loop;
    it fixes the model, its options and the input normalisation. Otherwise ``model`` (a name
    of ``raylab.models.MODEL_NAMES``) is built with ``options`` and ``num_classes`` outputs and,
    when ``weights`` names a plain state dict, loaded from it (the class count is then read from
    the weights' classifier; it does not change the features below the classifier).
    """

    model: str | None = None
    options: dict = field(default_factory=dict)
    num_classes: int = 1
    weights: str | None = None
    checkpoint: str | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.checkpoint is None):
            raise ValueError("give either a checkpoint or a model name, not both or neither")
        if self.checkpoint is not None and self.weights is not None:
            raise ValueError("weights come with the checkpoint: give a checkpoint or weights")

    def describe(self) -> dict:
        """What the source is, for a JSON record."""
        return {
            "model": self.model,
            "model_options": dict(self.options),
            "weights": self.weights,
            "checkpoint": self.checkpoint,
        }


def load_model(source: ModelSource) -> tuple[nn.Module, dict]:
    """The model of ``source`` in eval mode, and its config: ``model``, ``model_options``,
    ``num_classes``, ``mean``, ``std`` (the input normalisation) and ``data`` (the clip geometry
    it was trained on; empty for a name). ValueError when the weights do not fit the model."""
    from raylab.models import build_model

    if source.checkpoint is not None:
        model, config = load_checkpoint(source.checkpoint)
        return model.eval(), {
            "model": config.model,
            "model_options": config.model_options,
            "num_classes": config.num_classes,
            "mean": config.mean,
            "std": config.std,
            "data": config.clip.record(),
        }
    num_classes = source.num_classes
    model = build_model(source.model, num_classes, **source.options)
    if source.weights is not None:
        state = read_weights(source.weights)
        key = f"{final_classifier(model)}.weight"
        if key in state and state[key].shape[0] != num_classes:
            num_classes = int(state[key].shape[0])  # the weights' own class count
            model = build_model(source.model, num_classes, **source.options)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            detail = str(err).splitlines()[1:4]
            raise ValueError(
                f"{source.weights} does not fit model {source.model!r} with options "
                f"{source.options}: {' '.join(s.strip() for s in detail)}; give the width and "
                "options the weights were trained with (e.g. --width, --model-option "
                "head=pooled)"
            ) from err
    channels = getattr(model, "in_channels", 3)
    mean = RGB_MEAN if channels == 3 else (0.5,) * channels
    std = RGB_STD if channels == 3 else (0.5,) * channels
    return model.eval(), {
        "model": source.model,
        "model_options": dict(source.options),
        "num_classes": num_classes,
        "mean": tuple(mean),
        "std": tuple(std),
        "data": {},
    }


@dataclass(frozen=True)
class LayerChoice:
    """A module of a model and what of it to keep: its output or its input (``capture``),
    flattened per clip, or averaged over every axis but channels (``pool``)."""

    name: str
    capture: str = "output"
    pool: bool = False

    def __str__(self) -> str:
        return (
            self.name
            + (":input" if self.capture == "input" else "")
            + (":pool" if self.pool else "")
        )


def final_classifier(model: nn.Module) -> str:
    """The name of the model's final classifier: the last ``nn.Linear`` or 1x1(x1) convolution
    it registers (``classifier.fc8`` for C3D, ``logits`` for I3D, ``fc`` for TSN and STM,
    ``classifier`` for DenseNet3D and T3D). ValueError when it has none."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            and all(k == 1 for k in module.kernel_size)
        ):
            found = name
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no linear (or 1x1 conv) classifier: name a layer"
        )
    return found


def default_layer(model: nn.Module) -> LayerChoice:
    """C3D's fc6 (``classifier.fc6``: after its ReLU, as the paper's features) where the model
    has such a module; otherwise the input of :func:`final_classifier`, pooled to one vector per
    clip (the network's own clip descriptor, e.g. a pooled ``fc`` input for TSN)."""
    names = [n for n, _ in model.named_modules()]
    fc6 = [n for n in names if n == "fc6" or n.endswith(".fc6")]
    if len(fc6) == 1:
        return LayerChoice(fc6[0])
    return LayerChoice(final_classifier(model), capture="input", pool=True)


def resolve_layer(model: nn.Module, layer: str | None = None) -> LayerChoice:
    """The :class:`LayerChoice` for ``layer`` (None: :func:`default_layer`). A name matches a
    module of ``model.named_modules()`` exactly, or as the only one ending in ``.NAME``.

    ValueError for an unknown or ambiguous name (listing close names) or an unknown suffix.
    """
    if layer is None or not layer.strip():
        return default_layer(model)
    name, *flags = layer.strip().split(":")
    unknown = [f for f in flags if f not in _CAPTURES]
    if unknown:
        raise ValueError(
            f"layer {layer!r}: unknown suffix {unknown[0]!r}; use NAME, NAME:input, NAME:pool "
            "or NAME:input:pool"
        )
    names = [n for n, _ in model.named_modules() if n]
    if name not in names:
        tail = [n for n in names if n.endswith("." + name)]
        if len(tail) > 1:
            raise ValueError(f"layer {name!r} is ambiguous: it may be any of {', '.join(tail)}")
        if not tail:
            close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
            close += [
                n
                for n in names
                if n not in close
                and difflib.get_close_matches(name, [n.rsplit(".", 1)[-1]], cutoff=0.6)
            ][: 8 - len(close)]
            top = sorted({n.split(".")[0] for n in names})
            hint = f"close names: {', '.join(close)}" if close else f"top level: {', '.join(top)}"
            raise ValueError(
                f"no layer {name!r} in {type(model).__name__} ({hint}); any name of "
                "model.named_modules() works"
            )
        name = tail[0]
    return LayerChoice(name, "input" if "input" in flags else "output", "pool" in flags)


# --------------------------------------------------------------------------------------------
# The hook and the actor
# --------------------------------------------------------------------------------------------


class LayerTap:
    """A hook on one module of ``model`` that keeps, per forward, a copy of what
    ``choice`` names (a copy: a later in-place ReLU must not change it). Use as a context
    manager; :meth:`take` returns the (B, D) features of the last forward of ``batch`` clips."""

    def __init__(self, model: nn.Module, choice: LayerChoice) -> None:
        self.choice = choice
        self.module = dict(model.named_modules())[choice.name]
        self.seen: list[torch.Tensor] = []
        self.handle = None

    def __enter__(self) -> LayerTap:
        if self.choice.capture == "input":
            self.handle = self.module.register_forward_pre_hook(self._keep_input)
        else:
            self.handle = self.module.register_forward_hook(self._keep_output)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def _keep(self, value) -> None:
        if not isinstance(value, torch.Tensor):
            raise ValueError(
                f"layer {self.choice} gives a {type(value).__name__}, not a tensor: "
                "name one of its submodules"
            )
        self.seen.append(value.detach().float().clone())

    def _keep_input(self, _module, args) -> None:
        self._keep(args[0] if args else None)

    def _keep_output(self, _module, _args, output) -> None:
        self._keep(output)

    def take(self, batch: int) -> torch.Tensor:
        """The kept tensor as (batch, D): flattened, or pooled when ``choice.pool``."""
        seen, self.seen = self.seen, []
        if len(seen) != 1:
            raise ValueError(
                f"layer {self.choice} ran {len(seen)} times in one forward pass: it is shared "
                "(or unused); name a layer that runs once"
            )
        return clip_vectors(seen[0], batch, pool=self.choice.pool)


def clip_vectors(t: torch.Tensor, batch: int, *, pool: bool) -> torch.Tensor:
    """A layer's activations ``t`` for ``batch`` clips as (batch, D).

    ``pool``: rows of frames (a leading dimension ``batch * k``, as TSN/STM fold time into the
    batch) are averaged per clip, then every axis after the channels is averaged. Otherwise the
    activations of each clip are flattened.
    """
    if t.shape[0] != batch and (t.shape[0] == 0 or t.shape[0] % batch):
        raise ValueError(f"activations {tuple(t.shape)} cannot be split into {batch} clips")
    if not pool:
        return t.reshape(batch, -1)
    if t.shape[0] != batch:
        t = t.unflatten(0, (batch, -1)).mean(1)
    return t.flatten(2).mean(2) if t.ndim > 2 else t


class FeatureExtractor:
    """``map_batches`` callable: clip rows -> rows of ``video_id``, ``label``, ``view``,
    ``feature`` (float32, D) and, when the input has it, ``split``.

    ``layer`` is resolved with :func:`resolve_layer`. Placeholder rows of videos that failed
    to decode (``label`` -1) are passed on with a zero feature and not run through the model.
    """

    def __init__(self, source: ModelSource, layer: str | None = None) -> None:
        self.model, config = load_model(source)
        self.choice = resolve_layer(self.model, layer)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.mean = torch.tensor(config["mean"], device=self.device)
        self.std = torch.tensor(config["std"], device=self.device)
        self.dim: int | None = None

    @torch.no_grad()
    def features(self, clip: torch.Tensor) -> torch.Tensor:
        """uint8 clips (B, T, H, W, C) -> the layer's (B, D) float32 features, on the CPU."""
        clip = clip.to(self.device)
        ctx = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with LayerTap(self.model, self.choice) as tap, ctx:
            self.model(normalise(clip, self.mean, self.std))
        out = tap.take(clip.shape[0]).float().cpu()
        self.dim = out.shape[1]
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray(batch["label"]) >= 0
        feats = None
        if ok.any():
            got = self.features(torch.from_numpy(np.ascontiguousarray(batch["clip"][ok])))
            feats = np.zeros((len(ok), got.shape[1]), np.float32)
            feats[ok] = got.numpy()
        elif self.dim is not None:
            feats = np.zeros((len(ok), self.dim), np.float32)
        else:  # no decoded clip yet: run one blank clip to learn D
            dim = self.features(torch.from_numpy(batch["clip"][:1].copy())).shape[1]
            feats = np.zeros((len(ok), dim), np.float32)
        out = {
            "video_id": batch["video_id"],
            "label": batch["label"],
            "view": batch["view"],
            "feature": feats,
        }
        if "split" in batch:
            out["split"] = batch["split"]
        return out


# --------------------------------------------------------------------------------------------
# Per-video features
# --------------------------------------------------------------------------------------------


@dataclass
class VideoFeatures:
    """One L2-normalised feature vector per video: ``features`` (V, D) float32 beside
    ``video_ids``, ``labels`` and ``splits``; ``decode_failures`` lists, per split, the videos
    left out because their clips could not be decoded."""

    video_ids: list[str]
    labels: np.ndarray
    splits: list[str]
    features: np.ndarray
    layer: str = ""
    decode_failures: dict[str, list[str]] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def counts(self) -> dict[str, int]:
        """Videos per split."""
        out: dict[str, int] = {}
        for s in self.splits:
            out[s] = out.get(s, 0) + 1
        return dict(sorted(out.items()))

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(features, labels) of one split; KeyError naming the splits when it is absent."""
        mask = np.asarray(self.splits) == split
        if not mask.any():
            raise KeyError(f"no videos of split {split!r}; present: {list(self.counts())}")
        return self.features[mask], self.labels[mask]


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of ``x`` scaled to unit Euclidean norm (all-zero rows stay zero), as float32."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, eps)).astype(np.float32)


class ClipAverager:
    """Running per-video sums of clip features, so that no more than one vector per video is
    held however many clips stream past. :meth:`result` averages and L2-normalises them."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}
        self.labels: dict[str, int] = {}
        self.splits: dict[str, str] = {}

    def add(
        self,
        ids: Iterable[str],
        labels: Iterable[int],
        feats: np.ndarray,
        splits: Iterable[str] | None = None,
    ) -> None:
        """Add clip rows; a video's label (and split) must be the same in all its rows."""
        ids, labels = [str(v) for v in ids], [int(v) for v in labels]
        splits = [str(s) for s in splits] if splits is not None else [""] * len(ids)
        for vid, lab, sp, f in zip(ids, labels, splits, np.asarray(feats), strict=True):
            if vid in self.sums:
                if self.labels[vid] != lab or self.splits[vid] != sp:
                    raise ValueError(f"video {vid} comes with two labels or splits")
                self.sums[vid] += f
                self.counts[vid] += 1
            else:
                self.sums[vid] = f.astype(np.float64)
                self.counts[vid], self.labels[vid], self.splits[vid] = 1, lab, sp

    def result(self, layer: str = "") -> VideoFeatures:
        """One row per video, sorted by (split, video_id): the mean of its clips' features,
        L2-normalised."""
        order = sorted(self.sums, key=lambda v: (self.splits[v], v))
        dim = next(iter(self.sums.values())).shape[0] if self.sums else 0
        means = np.stack([self.sums[v] / self.counts[v] for v in order]) if order else None
        return VideoFeatures(
            video_ids=order,
            labels=np.asarray([self.labels[v] for v in order], dtype=np.int64),
            splits=[self.splits[v] for v in order],
            features=l2_normalise(means) if order else np.zeros((0, dim), np.float32),
            layer=layer,
        )


def average_clips(
    ids: Sequence[str],
    labels: Sequence[int],
    feats: np.ndarray,
    splits: Sequence[str] | None = None,
) -> VideoFeatures:
    """Clip features -> one L2-normalised mean feature per video (see :class:`ClipAverager`)."""
    acc = ClipAverager()
    acc.add(ids, labels, feats, splits)
    return acc.result()


def _tag_split(batch: dict[str, np.ndarray], split: str) -> dict[str, np.ndarray]:
    return batch | {"split": np.full(len(batch["label"]), split, dtype=object)}


def extract_features(
    shards: str | Path | Shards,
    source: ModelSource,
    clip: ClipConfig,
    *,
    layer: str | None = None,
    splits: Sequence[str] | None = None,
    resources: InferenceResources | None = None,
) -> VideoFeatures:
    """Per-video features of every video of ``splits`` (default: every split in the manifest).

    Each video gives ``clip.test_clips`` x ``clip.test_crops`` deterministic test views
    (``clip_dataset(..., train=False)``); a pool of :class:`FeatureExtractor` actors
    (``resources``) computes the layer's features per view, and the driver averages them
    per video and L2-normalises the mean. Videos whose clips cannot be decoded are left out
    and listed in ``decode_failures``. The layer and the clip geometry are checked on the
    driver (one forward of a blank clip) before any Ray work starts.
    """
    resources = resources or InferenceResources()
    shards = Shards.open(shards)
    present = [s for s, n in shards.manifest.splits.items() if n]
    splits = list(splits) if splits else present
    missing = [s for s in splits if s not in present]
    if missing or not splits:
        raise ValueError(f"{shards} holds no videos of split(s) {missing}; it has {present}")

    model, _ = load_model(source)
    choice = resolve_layer(model, layer)
    channels = getattr(model, "in_channels", 3)
    with torch.no_grad(), LayerTap(model, choice) as tap:
        model(torch.zeros(1, channels, clip.frames, clip.size, clip.size))  # wrong geometry fails
        tap.take(1)
    del model

    datasets = []
    for split in splits:
        decoder = resources.decoder_resource
        datasets.append(
            test_views(shards, split, clip, resources).map_batches(
                _tag_split,
                fn_kwargs={"split": split},
                batch_size=None,  # whole blocks: keep the decoder's batches as they come
                batch_format="numpy",
                num_cpus=resources.decoder_cpus,
                resources={decoder: 1} if decoder else None,
            )
        )
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    kwargs = {"source": source, "layer": str(choice)}
    out = through_model(ds, FeatureExtractor, kwargs, resources)
    acc = ClipAverager()
    failed: dict[str, list[str]] = {s: [] for s in splits}
    for batch, ok in batches(out):
        for vid, sp in zip(batch["video_id"][~ok], batch["split"][~ok], strict=True):
            failed[str(sp)].append(str(vid))
        if ok.any():
            acc.add(
                batch["video_id"][ok], batch["label"][ok], batch["feature"][ok], batch["split"][ok]
            )
    result = acc.result(layer=str(choice))
    if not result.video_ids:
        raise ValueError(f"no clip of split(s) {splits} under {shards} could be decoded")
    result.decode_failures = {s: sorted(set(v)) for s, v in failed.items()}
    return result


def write_features(features: VideoFeatures, out: str | Path, meta: dict | None = None) -> Path:
    """``out/features.parquet`` (columns ``video_id``, ``label``, ``split``, ``feature``: a
    fixed-size list of float32) and ``out/features.json`` (``meta`` plus layer, dim, counts per
    split and decode failures). Returns the Parquet path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    flat = pa.array(np.ascontiguousarray(features.features, np.float32).reshape(-1))
    table = pa.table(
        {
            "video_id": pa.array(features.video_ids, pa.string()),
            "label": pa.array(features.labels, pa.int32()),
            "split": pa.array(features.splits, pa.string()),
            "feature": pa.FixedSizeListArray.from_arrays(flat, features.dim),
        }
    )
    path = out / "features.parquet"
    pq.write_table(table, path)
    record = dict(meta or {}) | {
        "layer": features.layer,
        "dim": features.dim,
        "aggregation": "mean over each video's clips, then L2-normalised",
        "counts": features.counts(),
        "decode_failures": features.decode_failures,
    }
    (out / "features.json").write_text(json.dumps(record, indent=2, default=str))
    return path


def read_features(path: str | Path) -> VideoFeatures:
    """A ``features.parquet`` written by :func:`write_features` (its folder also works)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if path.is_dir():
        path = path / "features.parquet"
    table = pq.read_table(path)
    col = table["feature"].combine_chunks()
    dim = col.type.list_size
    feats = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return VideoFeatures(
        video_ids=table["video_id"].to_pylist(),
        labels=np.asarray(table["label"].to_pylist(), dtype=np.int64),
        splits=table["split"].to_pylist(),
        features=feats,
        layer=meta.get("layer", ""),
        decode_failures=meta.get("decode_failures", {}),
    )
