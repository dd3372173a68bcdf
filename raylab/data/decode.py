"""Decode the chosen frames of a stored video and cut them into uint8 views.

Decoding reads the in-memory bytes of one rendition with decord, asks it for exactly the
sampled indices (decord seeks to the key frame before each and decodes forward, which is
why ingest stores a short key-frame interval) and lets FFmpeg scale the frames to the
working short side while decoding, at a width decord returns intact (see
:func:`decodable_width`). Spatial transforms then run on uint8 arrays: clips
stay four times smaller than float32 until they reach the training device.

Training views: TSN-style multi-scale crop (scale jitter with aspect jitter, at a random
or a corner position), resized to ``size`` x ``size``, optional horizontal flip.
Evaluation views: centre crop or three crops along the long side.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import decord
import numpy as np
import torch
import torch.nn.functional as F

from raylab.data.clips import TSN_SCALES, ClipConfig
from raylab.data.sampling import clip_indices


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side set to ``short_side``, aspect kept, sides even."""
    if height <= width:
        return short_side, max(2, round(width * short_side / height / 2) * 2)
    return max(2, round(height * short_side / width / 2) * 2), short_side


# Row alignments (pixels or bytes) FFmpeg pads decoded frames to: 32 in the FFmpeg 4 that
# decord bundles, 16 or 64 in builds that follow the CPU's vector width.
_ROW_ALIGNMENTS: tuple[int, ...] = (16, 32, 64)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def decord_keeps_width(width: int) -> bool:
    """Whether decord returns RGB frames ``width`` pixels wide intact.

    decord takes a frame whose padded row length is a whole multiple of its width for a
    packed one, with that multiple as its channel count (dmlc/decord#336): at width 72 a
    row padded to 96 pixels reads as 4 channels and every batch copy fails ("The size must
    exactly match (21024 vs. 15768)"). Widths where a row padded to any usual alignment is
    such a multiple are refused: a few below 145 (8, 12, 16, 24, 32, 36, 48, 72, 96, 144).
    """
    packed = 3 * width
    for align in _ROW_ALIGNMENTS:
        for row in (3 * _round_up(width, align), _round_up(packed, align)):
            if row != packed and row % width == 0:
                return False
    return True


def decodable_width(width: int, step: int = 1) -> int:
    """The smallest width from ``width`` up, in steps of ``step``, that decord returns
    intact: ``width`` itself but for a few small ones, then a pixel or two more."""
    while not decord_keeps_width(width):
        width += step
    return width


def _reader(data: bytes, height: int = -1, width: int = -1):
    return decord.VideoReader(
        io.BytesIO(data), ctx=decord.cpu(0), num_threads=1, height=height, width=width
    )


def open_video(data: bytes, height: int | None = None, width: int | None = None, step: int = 1):
    """A decord VideoReader on in-memory bytes whose frames are ``height`` x ``width`` (scaled
    while decoding) or the stored size when not given.

    The width is raised to :func:`decodable_width` (``step``: 2 keeps it even), so some
    small widths come out a pixel or two wider, the aspect that much off: every consumer
    crops from whatever frame it gets, and a wider frame keeps the short side it asked for.
    """
    if height is None or width is None:
        reader = _reader(data)
        # The stored size; decord reports it right even at a width whose pixels it mangles.
        height, width = reader[0].shape[:2]
        if decodable_width(width, step) == width:
            return reader
    return _reader(data, height, decodable_width(width, step))


def open_flow(data: bytes, height: int | None = None, width: int | None = None) -> FlowFrames:
    """A :class:`FlowFrames` reader of a stored flow video, each of x and y ``height`` x
    ``width`` (the stored size when not given), widened as :func:`open_video` says."""
    return FlowFrames(open_video(data, height, None if width is None else 2 * width, step=2))


class FlowFrames:
    """A reader of a stored flow video (x and y side by side, see ingest's ``FlowEncoder``)
    whose frames come out as (n, H, W, 2) uint8, 128 meaning no motion."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def __len__(self) -> int:
        return len(self.reader)

    def get_batch(self, indices: list[int]) -> _Decoded:
        grey = self.reader.get_batch(indices).asnumpy()[..., 0]  # R = G = B for grey
        w = grey.shape[2] // 2
        return _Decoded(np.stack([grey[:, :, :w], grey[:, :, w:]], axis=-1))


@dataclass
class _Decoded:
    array: np.ndarray

    def asnumpy(self) -> np.ndarray:
        return self.array


def decode_frames(reader, indices: np.ndarray) -> np.ndarray:
    """Frames at ``indices`` (any shape, repeats allowed) as uint8 (*indices.shape, H, W, 3).

    Each distinct frame is decoded once, in increasing order, however often it is used.
    """
    flat = np.asarray(indices, dtype=np.int64).reshape(-1)
    unique, inverse = np.unique(flat, return_inverse=True)
    frames = reader.get_batch(unique.tolist()).asnumpy()
    return frames[inverse].reshape(*np.shape(indices), *frames.shape[1:])


def resize(clip: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a uint8 (T, H, W, 3) clip to ``size`` (square or (H, W)), bilinear, antialiased."""
    out_hw = (size, size) if isinstance(size, int) else size
    if clip.shape[1:3] == tuple(out_hw):
        return clip
    t = torch.from_numpy(np.ascontiguousarray(clip)).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=out_hw, mode="bilinear", antialias=True, align_corners=False)
    return t.permute(0, 2, 3, 1).contiguous().numpy()


def flip_width(clip: np.ndarray) -> np.ndarray:
    """A (T, H, W, C) clip mirrored left to right, as a new contiguous array: the same bytes
    as ``np.ascontiguousarray(clip[:, :, ::-1])``, copied by torch's vectorised flip rather
    than by numpy a pixel's few bytes at a time."""
    return torch.from_numpy(np.ascontiguousarray(clip)).flip(2).numpy()


def center_crop(clip: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` window of a (T, H, W, C) clip."""
    h, w = clip.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return clip[:, top : top + size, left : left + size]


def three_crop(clip: np.ndarray, size: int) -> list[np.ndarray]:
    """Three ``size`` squares along the long side (start, centre, end), as I3D/TSN test."""
    h, w = clip.shape[1:3]
    if w >= h:
        top = (h - size) // 2
        lefts = (0, (w - size) // 2, w - size)
        return [clip[:, top : top + size, x : x + size] for x in lefts]
    left = (w - size) // 2
    tops = (0, (h - size) // 2, h - size)
    return [clip[:, y : y + size, left : left + size] for y in tops]


def multiscale_crop(
    clip: np.ndarray,
    size: int,
    rng: np.random.Generator,
    scales: tuple[float, ...] = TSN_SCALES,
    corner_crops: bool = True,
) -> np.ndarray:
    """TSN's scale-and-aspect jittered crop of a (T, H, W, 3) clip, resized to ``size``.

    Crop height and width are drawn from ``scales`` x short side, at most one scale step
    apart; the window sits at one of five fixed positions (corners, centre) or anywhere.
    """
    h, w = clip.shape[1:3]
    base = min(h, w)
    sizes = [int(base * s) for s in scales]
    pairs = [
        (ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= 1
    ]
    ch, cw = pairs[rng.integers(len(pairs))]
    if corner_crops:
        dy, dx = (h - ch) // 4, (w - cw) // 4
        positions = [(0, 0), (0, 4 * dx), (4 * dy, 0), (4 * dy, 4 * dx), (2 * dy, 2 * dx)]
        top, left = positions[rng.integers(len(positions))]
    else:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return resize(clip[:, top : top + ch, left : left + cw], size)


def sample_views(
    reader, clip: ClipConfig, rng: np.random.Generator, train: bool, corner_crops: bool = True
) -> list[np.ndarray]:
    """All views of one video as uint8 (T, size, size, C) arrays, in view order: one random
    view when ``train`` (a multi-scale crop, at TSN's fixed corner and centre positions
    unless ``corner_crops`` is off), else ``clip.test_clips`` x ``clip.test_crops`` fixed
    ones.

    ``reader`` yields frames at the working short side (see :func:`open_video`). View ``v``
    at test is clip ``v // test_crops``, crop ``v % test_crops``.
    """
    idx = clip_indices(
        len(reader),
        clip.frames,
        clip.stride,
        scheme=clip.scheme,
        train=train,
        num_clips=1 if train else clip.test_clips,
        rng=rng,
    )
    clips = decode_frames(reader, idx)  # (clips, T, H, W, 3)
    if train:
        view = multiscale_crop(clips[0], clip.size, rng, clip.crop_scales, corner_crops)
        if clip.flip and rng.random() < 0.5:
            view = flip_width(view)
            if clip.modality == "flow":  # mirrored motion: x flips sign (255 - q ~ -x)
                view = np.concatenate([255 - view[..., :1], view[..., 1:]], axis=-1)
        return [np.ascontiguousarray(view)]
    views = []
    for c in clips:
        crops = [center_crop(c, clip.size)] if clip.test_crops == 1 else three_crop(c, clip.size)
        views.extend(np.ascontiguousarray(v) for v in crops)
    return views
