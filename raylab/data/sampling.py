"""Which frames a clip is made of.

Two schemes cover the four papers:

- dense clips (C3D, I3D, T3D): ``frames`` consecutive indices ``stride`` apart; a random
  offset in training, ``num_clips`` evenly spaced clips at test (multi-view testing);
- TSN segments (STM, TSN): the video is cut into ``frames`` equal segments and one frame
  is taken from each, at random in training and at its centre at test.

Videos shorter than a clip are looped, as I3D does, so a 3-frame video still yields a
16-frame clip. All functions are pure: the same (seed, epoch, video) gives the same
indices, so a run can be replayed.
"""

from __future__ import annotations

import zlib

import numpy as np


def sample_rng(seed: int, epoch: int, video_id: str) -> np.random.Generator:
    """The random generator for one video in one epoch; stable across processes and runs."""
    # crc32, not hash(): Python's str hash is salted per process.
    return np.random.default_rng([seed, epoch, zlib.crc32(video_id.encode("utf-8"))])


def _check(num_frames: int, frames: int, stride: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"a video needs at least one frame to sample from, got {num_frames}")
    if frames < 1 or stride < 1 or num_clips < 1:
        raise ValueError(
            f"frames, stride and num_clips must be >= 1, got {frames}, {stride}, {num_clips}"
        )


def dense_clip_indices(
    num_frames: int,
    frames: int,
    stride: int,
    *,
    train: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Frame indices of dense clips, shape (num_clips, frames), all in [0, num_frames).

    A clip spans ``(frames - 1) * stride + 1`` source frames. In training one clip starts
    at a random offset (``rng`` required); at test ``num_clips`` clips are spread evenly
    over the video, each centred in its share. A video shorter than the span is looped.
    """
    _check(num_frames, frames, stride, num_clips)
    span = (frames - 1) * stride + 1
    steps = np.arange(frames) * stride
    slack = num_frames - span  # how far a clip can slide; negative means the video loops
    if train:
        if rng is None:
            raise ValueError("training samples need an rng (see sample_rng)")
        starts = rng.integers(0, max(slack, 0) + 1, size=num_clips)
    elif slack <= 0:
        starts = np.zeros(num_clips, dtype=np.int64)
    else:
        # Each clip is centred in one of num_clips equal shares of the sliding range.
        starts = np.floor((np.arange(num_clips) + 0.5) * (slack + 1) / num_clips).astype(np.int64)
    return ((starts[:, None] + steps[None, :]) % num_frames).astype(np.int64)


def segment_indices(
    num_frames: int,
    segments: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """TSN sampling: one frame from each of ``segments`` equal parts, shape (1, segments).

    Training takes a random frame inside each segment; test takes each segment's centre.
    With fewer frames than segments the frames repeat in order (the video is looped).
    """
    _check(num_frames, segments, 1, 1)  # a segment sample has no stride, one clip
    if num_frames < segments:
        return (np.arange(segments) % num_frames)[None, :].astype(np.int64)
    edges = np.linspace(0, num_frames, segments + 1)
    lo = np.ceil(edges[:-1] - 1e-9).astype(np.int64)
    hi = np.maximum(np.ceil(edges[1:] - 1e-9).astype(np.int64), lo + 1)  # exclusive
    if train:
        if rng is None:
            raise ValueError("training samples need an rng (see sample_rng)")
        idx = rng.integers(lo, hi)
    else:
        idx = (lo + hi - 1) // 2
    return np.clip(idx, 0, num_frames - 1)[None, :].astype(np.int64)


def clip_indices(
    num_frames: int,
    frames: int,
    stride: int,
    *,
    scheme: str = "dense",
    train: bool,
    num_clips: int = 1,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Dispatch to :func:`dense_clip_indices` or :func:`segment_indices` by ``scheme``.

    For ``"segments"`` the stride is ignored and ``num_clips`` > 1 at test shifts the
    segment centres evenly inside each segment (TSN's multi-clip test).
    """
    if scheme == "dense":
        return dense_clip_indices(
            num_frames, frames, stride, train=train, num_clips=num_clips, rng=rng
        )
    if scheme == "segments":
        if train or num_clips == 1:
            return np.repeat(
                segment_indices(num_frames, frames, train=train, rng=rng), num_clips, axis=0
            )
        seg = num_frames / frames
        offsets = (np.arange(num_clips) + 0.5) / num_clips * seg
        idx = np.floor(np.arange(frames)[None, :] * seg + offsets[:, None]).astype(np.int64)
        return idx % num_frames
    raise ValueError(f"unknown sampling scheme {scheme!r}: use 'dense' or 'segments'")
