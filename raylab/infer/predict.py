"""Classify source videos with a trained checkpoint: what a user does after training.

No ingest is needed. Each source file goes through what ingest does to a video (decoded as a
player shows it, with its rotation, pixel aspect and frame timing applied, and re-encoded at
one rendition, ``raylab.data.ingest.encode_video``) and then through the training pipeline's
own decoder (``raylab.data.pipeline.ClipDecoder``) with the checkpoint's clip settings at
test time: ``clips`` x ``crops`` views per video, scores softmax-averaged per video. So a
video is cut into exactly the clips evaluation would cut from shards ingested at the same
rendition. Decoding runs as Ray Data tasks, the model in a pool of predictor actors.

A file that cannot be decoded gets a result with its error, and the rest go on.
"""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raylab.config import ClipConfig
from raylab.data.annotations import VIDEO_EXTENSIONS
from raylab.data.ingest import EncodeParams, Rejected, encode_video
from raylab.data.pipeline import (
    ERROR_BYTES,
    FAILED,
    ClipDecoder,
    describe_error,
    error_row,
    error_text,
)
from raylab.data.storage import rendition_column
from raylab.infer.batch import InferenceResources, batches, through_model
from raylab.metrics import video_scores


def find_videos(source: str | Path) -> list[str]:
    """The video files named by ``source``: a folder (searched recursively for video
    extensions), a glob pattern, or a CSV file whose ``path`` column (else its first column)
    lists them, relative paths being relative to the CSV's folder. Sorted, no repeats.

    Raises FileNotFoundError naming ``source`` when it names no video.
    """
    source = str(source)
    path = Path(source)
    if path.is_dir():
        found = [str(p) for p in path.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS]
    elif path.is_file() and path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = [r for r in csv.reader(f) if r and r[0].strip()]
        column = 0
        if rows and "path" in [c.strip().lower() for c in rows[0]]:
            column = [c.strip().lower() for c in rows[0]].index("path")
            rows = rows[1:]
        found = [str((path.parent / r[column].strip()).resolve()) for r in rows]
    elif path.is_file():
        found = [str(path)]
    else:
        found = glob.glob(source, recursive=True)
    found = sorted(set(found))
    if not found:
        raise FileNotFoundError(
            f"{source}: no videos there; give a folder of videos, a glob such as "
            "'clips/*.mp4', or a CSV with a path column"
        )
    return found


@dataclass(frozen=True)
class SourceClips:
    """``map_batches`` callable: ``{"path"}`` rows -> clip rows, as ``ClipDecoder`` makes
    from shards. A file that is no video, or one FFmpeg cannot decode, yields one
    placeholder row (``label`` -1) whose ``error`` says why."""

    clip: ClipConfig  # decoded as a test pass: clip.test_clips x clip.test_crops views
    params: EncodeParams

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        short_side = self.params.short_sides[0]
        column = rendition_column(short_side)
        rows: dict[str, list] = {"video_id": [], "label": [], "height": [], "width": [], column: []}
        frames: dict[str, int] = {}  # each video's own frame count, reported with its views
        failed: list[tuple[str, str]] = []
        for path in batch["path"]:
            path = str(path)
            try:
                encoded = encode_video(Path(path), self.params)
            except Rejected as err:
                failed.append((path, f"video {path}: {err}"))
                continue
            except Exception as err:  # FFmpeg failing on a file is that file's fault
                failed.append((path, describe_error(path, err)))
                continue
            frames[path] = int(encoded["num_frames"])
            rows["video_id"].append(path)
            rows["label"].append(0)  # unknown; the decoder only carries it through
            rows["height"].append(encoded["height"])
            rows["width"].append(encoded["width"])
            rows[column].append(encoded[column])
        out = ClipDecoder(self.clip, False, column, seed=0)(
            {
                k: np.asarray(v, dtype=object if k in ("video_id", column) else None)
                for k, v in rows.items()
            }
        )
        out["frames"] = np.asarray([frames[str(v)] for v in out["video_id"]], np.int64)
        if not failed:
            return out
        blank = np.zeros(
            (len(failed), self.clip.frames, self.clip.size, self.clip.size, 3), np.uint8
        )
        return {
            "clip": np.concatenate([out["clip"], blank]),
            "label": np.concatenate([out["label"], np.full(len(failed), FAILED, np.int64)]),
            "video_id": np.concatenate(
                [out["video_id"], np.asarray([p for p, _ in failed], object)]
            ),
            "view": np.concatenate([out["view"], np.full(len(failed), FAILED, np.int32)]),
            "frames": np.concatenate([out["frames"], np.zeros(len(failed), np.int64)]),
            "error": np.concatenate(
                [out["error"].reshape(-1, ERROR_BYTES), np.stack([error_row(e) for _, e in failed])]
            ),
        }


def rgb_clip(clip: ClipConfig) -> ClipConfig:
    """``clip`` when it reads RGB frames, which source videos hold; else a clear error."""
    if clip.modality != "rgb":
        raise ValueError(
            f"the checkpoint reads {clip.modality}, which source videos do not hold: ingest "
            "them with jobs/ingest.py --flow and use jobs/evaluate.py"
        )
    return clip


def source_clip_dataset(
    videos: list[str],
    clip: ClipConfig,
    *,
    short_side: int | None = None,
    decoder_cpus: float = 1.0,
    videos_per_batch: int = 4,
):
    """A ``ray.data.Dataset`` of ``clip``'s test views cut from source video files."""
    import ray

    side = short_side or clip.working_short_side
    side += side % 2  # renditions have even sides
    params = EncodeParams(short_sides=(side,))
    ds = ray.data.from_items([{"path": v} for v in videos])
    return ds.map_batches(
        SourceClips(clip, params),
        batch_size=videos_per_batch,
        batch_format="numpy",
        num_cpus=decoder_cpus,
    )


def predict_videos(
    videos: list[str],
    checkpoint: str | Path,
    *,
    clips: int = 10,
    crops: int = 3,
    top: int = 5,
    short_side: int | None = None,
    resources: InferenceResources | None = None,
    progress=None,
) -> list[dict]:
    """One result per video, in ``videos``' order: ``{"video", "top": [{"class", "score"},
    ...], "frames"}`` (the ``top`` classes by averaged score; ``"looped": true`` beside a
    video shorter than a clip spans, whose clips repeat it to fill their frames, as
    training's do) or ``{"video", "error"}``."""
    from raylab.infer.evaluate import Predictor, evaluation_clip
    from raylab.train.checkpoints import load_checkpoint

    resources = resources or InferenceResources()
    _, config = load_checkpoint(checkpoint)
    clip = rgb_clip(evaluation_clip(config, clips, crops))
    views = clip.test_views
    classes = config.classes
    ds = source_clip_dataset(
        videos, clip, short_side=short_side, decoder_cpus=resources.decoder_cpus
    )
    out = through_model(ds, Predictor, {"checkpoint": str(checkpoint)}, resources)
    ids, logits, errors, frames = [], [], {}, {}
    for batch, ok in batches(out):
        for vid, err in zip(batch["video_id"][~ok], batch["error"][~ok], strict=True):
            errors[str(vid)] = error_text(err)
        ids.extend(str(v) for v in batch["video_id"][ok])
        frames.update(
            zip(map(str, batch["video_id"][ok]), batch["frames"][ok].tolist(), strict=True)
        )
        logits.append(batch["logits"][ok])
        if progress is not None:  # counts views: a failed video's one row stands for all
            progress.update(int(ok.sum()) + views * int((~ok).sum()))
    results: dict[str, dict] = {v: {"video": v, "error": e} for v, e in errors.items()}
    if ids:
        scores, _, video_ids = video_scores(ids, [0] * len(ids), np.concatenate(logits))
        k = min(top, scores.shape[1])
        for vid, s in zip(video_ids, scores, strict=True):
            best = np.argsort(-s)[:k]
            results[vid] = {
                "video": vid,
                "views": views,
                "top": [{"class": classes[i], "score": round(float(s[i]), 4)} for i in best],
                "frames": frames[vid],
            }
            if frames[vid] < clip.span:
                results[vid]["looped"] = True
    return [results.get(v, {"video": v, "error": "no clip came back"}) for v in videos]
