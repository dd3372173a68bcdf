"""Writers of small real video files for tests (PyAV, real codecs and containers)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def counter_frames(n: int, height: int = 64, width: int = 80) -> np.ndarray:
    """Frames whose grey level encodes their index (16 + 6 i), to check frame-exact decoding.

    Steps of 6 survive the level shifts of compression and scaling (seen: up to 2).
    """
    levels = 16 + 6 * np.arange(n)
    if levels.max() > 240:
        raise ValueError("counter videos hold at most 38 frames")
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).astype(np.uint8)


def frame_index(frame: np.ndarray) -> int:
    """The index a counter frame encodes (robust to compression noise)."""
    return int(round((float(frame.mean()) - 16) / 6))


def write_video(
    path: Path,
    frames: np.ndarray,
    *,
    codec: str = "libx264",
    fps: int = 25,
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
) -> Path:
    """Encode uint8 (T, H, W, 3) frames with ``codec`` into the container ``path`` names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.options = options or {}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def noise_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames that move, so codecs have something real to encode."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    return np.stack([np.roll(big, i, axis=1)[:height, :width] for i in range(n)])
