"""Writers of small real video files for tests (PyAV, real codecs and containers)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from raylab.data.ingest import x264_options


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
    rotation: int = 0,
    hflip: bool = False,
    sample_aspect: Fraction | None = None,
    times_ms: list[int] | None = None,
) -> Path:
    """Encode uint8 (T, H, W, 3) frames with ``codec`` into the container ``path`` names.

    ``rotation`` (degrees counter-clockwise) and ``hflip`` (after it) go in the display
    matrix a player applies; ``sample_aspect`` is the pixels' width to height;
    ``times_ms`` are the frames' timestamps (a variable rate) instead of ``fps``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        options = dict(options or {})
        if codec == "libx264":  # the same frames, the same bytes
            options |= x264_options(options.get("x264-params", ""))
        stream.options = options
        if rotation or hflip:
            stream.set_display_rotation(rotation, hflip=hflip)
        if sample_aspect is not None:
            stream.codec_context.sample_aspect_ratio = sample_aspect
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if times_ms is None:
                frame.pts, frame.time_base = i, Fraction(1, fps)
            else:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def noise_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random frames that move, so codecs have something real to encode."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))
    return np.stack([np.roll(big, i, axis=1)[:height, :width] for i in range(n)])


def write_vp9_with_hidden_frames(path: Path, frames: np.ndarray, fps: int = 25) -> int:
    """A VP9 MP4 whose hidden alt-ref frames are samples of their own, as some muxers
    write them: the container lists more frames than a player shows. Returns the number
    of hidden frames.

    libvpx makes alt-ref frames in one pass only in real-time mode with a look-ahead and a
    bit rate; it packs each with the next shown frame (a superframe), which FFmpeg's
    ``vp9_superframe_split`` unpacks and FFmpeg's muxers re-pack unless told not to.
    """
    packed = path.with_suffix(".packed.webm")
    write_video(
        packed,
        frames,
        codec="libvpx-vp9",
        fps=fps,
        options={
            "deadline": "realtime",
            "cpu-used": "8",
            "lag-in-frames": "16",
            "auto-alt-ref": "1",
            "b": "300k",
        },
    )
    with av.open(str(packed)) as src:
        stream = src.streams.video[0]
        split = av.BitStreamFilterContext("vp9_superframe_split", stream)
        packets = [
            p for packet in src.demux(stream) for p in split.filter(packet if packet.size else None)
        ]
        time_base = stream.time_base
        with av.open(str(path), "w", options={"fflags": "-autobsf"}) as out:
            dst = out.add_stream_from_template(stream)
            half_frame = round(1 / (2 * fps) / time_base)
            for i, packet in enumerate(packets):
                if packet.pts is None:  # a hidden frame: decoded just before the next shown
                    packet.pts = packets[i + 1].pts - half_frame
                packet.dts, packet.time_base, packet.stream = packet.pts, time_base, dst
                out.mux(packet)
    packed.unlink()
    return len(packets) - len(frames)


COLOUR_CLASSES = {
    "Red": (200, 40, 40),
    "Green": (40, 200, 40),
    "Blue": (40, 40, 200),
    "Yellow": (200, 200, 40),
}


def write_colour_classes(
    root: Path,
    *,
    per_class: int = 20,
    test_per_class: int = 4,
    frames: int = 20,
    height: int = 48,
    width: int = 64,
) -> None:
    """A set in UCF101 layout whose class is the tint of moving noise: what a tiny network
    learns within a few dozen steps, where the demo set's motion classes take hundreds.
    The first ``test_per_class`` videos of each class (two per group) are the test list."""
    train, test = [], []
    for ci, (name, colour) in enumerate(COLOUR_CLASSES.items()):
        for i in range(per_class):
            noise = noise_frames(frames, height, width, seed=100 * ci + i).astype(np.float32)
            tinted = (noise + np.array(colour, np.float32)) / 2
            rel = f"{name}/v_{name}_g{i // 2 + 1:02d}_c{i % 2 + 1:02d}.mp4"
            write_video(root / rel, tinted.astype(np.uint8))
            if i < test_per_class:
                test.append(rel)
            else:
                train.append(f"{rel} {ci + 1}")
    (root / "classInd.txt").write_text(
        "".join(f"{i + 1} {name}\n" for i, name in enumerate(COLOUR_CLASSES))
    )
    (root / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (root / "testlist01.txt").write_text("\n".join(test) + "\n")
