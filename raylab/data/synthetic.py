"""The temporal-reasoning demo dataset: real H.264 files in UCF101 layout.

Eight classes come in four time-reversed pairs: an object (a textured bar) moves left or
right, up or down, rotates clockwise or anticlockwise, grows or shrinks. Every video draws
all its nuisance factors the same way whatever its class (background, object texture,
size, position, angle, speed), and each class is its partner played backwards, so:

* the state of one frame taken at a random time (position, angle, scale) has the same
  distribution in every class: the attribute that moves in one class is, in the others,
  held at a value drawn from that same moving range;
* the *set* of frames of a video is equally likely under both classes of a pair.

A frame classifier, or a 2D network that averages frame scores (TSN), is therefore at
chance on the pairs; telling them apart needs the order of frames.

Videos of one group (``gGG``) share their background and object across all classes, as
UCF101's groups share an actor and a scene, and the split is by group so test videos show
unseen scenes.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from raylab.data.ingest import x264_options
from raylab.progress import progress_bar

DEMO_CLASSES: tuple[str, ...] = (
    "MoveLeft",
    "MoveRight",
    "MoveUp",
    "MoveDown",
    "RotateClockwise",
    "RotateAnticlockwise",
    "Grow",
    "Shrink",
)

# Which state attribute each class drives and in which direction. State columns are
# x, y (pixels), angle (radians, clockwise on screen), log-scale.
_MOTION: dict[str, tuple[int, float]] = {
    "MoveLeft": (0, -1.0),
    "MoveRight": (0, 1.0),
    "MoveUp": (1, -1.0),
    "MoveDown": (1, 1.0),
    "RotateClockwise": (2, 1.0),
    "RotateAnticlockwise": (2, -1.0),
    "Grow": (3, 1.0),
    "Shrink": (3, -1.0),
}

SPRITE = 32  # texture side in sprite pixels
OBJECT_FRACTION = 0.24  # object size at scale 1, as a fraction of the short side
# The object is a bar, not a square: its outline shows which way it points even when it is
# a few pixels long, so a turn is visible in the silhouette. Width and height as multiples
# of the size: twice as long as wide, with the area of a square of that size.
OBJECT_SHAPE = (math.sqrt(2), math.sqrt(2) / 2)
LOG_SCALE_RANGE = (math.log(0.6), math.log(1.4))
CLIPS_PER_GROUP = 4
TEST_GROUP_FRACTION = 0.25


@dataclass(frozen=True)
class Scene:
    """What a group's videos share: the background and the object's texture."""

    background: np.ndarray  # uint8 (H, W, 3)
    sprite: np.ndarray  # float32 (SPRITE, SPRITE, 3), values 0..255


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Colour noise on a coarse grid, bilinearly upsampled to (height, width, 3), in 0..1."""
    grid = rng.random((cells + 1, cells + 1, 3))
    ys = np.linspace(0, cells, height)
    xs = np.linspace(0, cells, width)
    y0, x0 = np.minimum(ys.astype(int), cells - 1), np.minimum(xs.astype(int), cells - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def make_scene(rng: np.random.Generator, height: int, width: int) -> Scene:
    """A random low-contrast background and a random high-contrast, asymmetric texture."""
    base = rng.random(3) * 0.6 + 0.2
    background = base + (_smooth_noise(rng, height, width, 4) - 0.5) * 0.35
    background += rng.normal(0, 0.02, background.shape)  # fine grain, as a camera has
    # Colour noise on a 4x4 grid, thresholded per channel for contrast: a texture whose
    # motion shows everywhere on the object, not only at its outline.
    sprite = _smooth_noise(rng, SPRITE, SPRITE, 3)
    sprite = np.where(sprite > 0.5, 1.0, 0.1) * 0.6 + sprite * 0.4
    sprite[:2], sprite[-2:], sprite[:, :2], sprite[:, -2:] = 0.0, 0.0, 0.0, 0.0
    return Scene(
        background=(np.clip(background, 0, 1) * 255).astype(np.uint8),
        sprite=(sprite * 255).astype(np.float32),
    )


def sample_trajectory(
    label: str, rng: np.random.Generator, frames: int, height: int, width: int
) -> np.ndarray:
    """Per-frame object state (frames, 4): x, y, angle, log-scale, for a video of ``label``.

    Each attribute has a centre and an extent drawn the same way for every class; the
    class's attribute sweeps its extent over the video, the others sit at one point of
    theirs drawn uniformly, so a frame at a random time looks the same in every class.
    """
    if label not in _MOTION:
        raise ValueError(f"unknown demo class {label!r}; classes are {', '.join(DEMO_CLASSES)}")
    short = min(height, width)
    side = OBJECT_FRACTION * short
    # Half the diagonal of the largest object: keeps it wholly inside the frame.
    reach = side * math.exp(LOG_SCALE_RANGE[1]) * math.hypot(*OBJECT_SHAPE) / 2
    x_room, y_room = width - 2 * reach, height - 2 * reach
    extents = np.array(
        [
            rng.uniform(0.5, 0.9) * x_room,
            rng.uniform(0.5, 0.9) * y_room,
            rng.uniform(0.75, 1.25) * math.pi,
            rng.uniform(0.7, 1.0) * (LOG_SCALE_RANGE[1] - LOG_SCALE_RANGE[0]),
        ]
    )
    centres = np.array(
        [
            reach + extents[0] / 2 + rng.random() * (x_room - extents[0]),
            reach + extents[1] / 2 + rng.random() * (y_room - extents[1]),
            rng.uniform(0, 2 * math.pi),
            LOG_SCALE_RANGE[0]
            + extents[3] / 2
            + rng.random() * (np.ptp(LOG_SCALE_RANGE) - extents[3]),
        ]
    )
    held = rng.random(4) - 0.5  # where a still attribute sits within its extent
    attribute, direction = _MOTION[label]
    sweep = np.linspace(-0.5, 0.5, frames) * direction
    state = np.tile(centres + held * extents, (frames, 1))
    state[:, attribute] = centres[attribute] + sweep * extents[attribute]
    return state


def render_frame(scene: Scene, x: float, y: float, angle: float, log_scale: float) -> np.ndarray:
    """The scene's background with its object centred at (x, y), turned ``angle`` radians
    clockwise on screen and scaled by exp(log_scale); uint8 (H, W, 3)."""
    height, width = scene.background.shape[:2]
    size = OBJECT_FRACTION * min(height, width) * math.exp(log_scale)
    out = scene.background.copy()
    # Only pixels within the object's half-diagonal of its centre can show it: work on
    # that box, a fifth of a demo frame, and leave the background elsewhere.
    reach = size * math.hypot(*OBJECT_SHAPE) / 2 + 2
    top, bottom = max(0, math.floor(y - reach)), min(height, math.ceil(y + reach) + 1)
    left, right = max(0, math.floor(x - reach)), min(width, math.ceil(x + reach) + 1)
    if top >= bottom or left >= right:
        return out
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float32)
    dx, dy = xs + 0.5 - x, ys + 0.5 - y
    # Inverse map: screen offset -> sprite coordinates (rotate back, then unscale).
    # With y pointing down, a positive angle in this rotation turns clockwise on screen.
    c, s = math.cos(angle), math.sin(angle)
    u = (c * dx + s * dy) / (size * OBJECT_SHAPE[0]) * SPRITE + SPRITE / 2 - 0.5
    v = (-s * dx + c * dy) / (size * OBJECT_SHAPE[1]) * SPRITE + SPRITE / 2 - 0.5
    inside = (u > -0.5) & (u < SPRITE - 0.5) & (v > -0.5) & (v < SPRITE - 0.5)
    u0 = np.clip(np.floor(u), 0, SPRITE - 2).astype(int)
    v0 = np.clip(np.floor(v), 0, SPRITE - 2).astype(int)
    fu = np.clip(u - u0, 0, 1)[..., None]
    fv = np.clip(v - v0, 0, 1)[..., None]
    t = scene.sprite
    texel = (t[v0, u0] * (1 - fu) + t[v0, u0 + 1] * fu) * (1 - fv) + (
        t[v0 + 1, u0] * (1 - fu) + t[v0 + 1, u0 + 1] * fu
    ) * fv
    box = out[top:bottom, left:right]
    box[inside] = texel[inside].round().astype(np.uint8)
    return out


def render_video(scene: Scene, trajectory: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) frames of ``scene`` following ``trajectory`` (T, 4)."""
    return np.stack([render_frame(scene, *state) for state in trajectory])


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 25) -> None:
    """Encode uint8 (T, H, W, 3) frames as H.264 yuv420p MP4 with PyAV.

    With one encoder thread, and x264 held to its AVX2 routines on an AVX-512 CPU
    (:func:`raylab.data.ingest.x264_asm`), the stream is a function of the frames."""
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # One encoder thread: x264's output then depends only on its input.
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", **x264_options()}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def demo_name(label: str, group: int, clip: int) -> str:
    """UCF101-style relative path without extension: ``<Class>/v_<Class>_gGG_cCC``."""
    return f"{label}/v_{label}_g{group:02d}_c{clip:02d}"


def _write_demo_video(item: tuple) -> None:
    out, seed, ci, label, group, clip, frames, height, width, fps = item
    # A group's scene is shared by every class, so a background tells nothing.
    scene = make_scene(np.random.default_rng([seed, group]), height, width)
    rng = np.random.default_rng([seed, ci, group, clip])
    trajectory = sample_trajectory(label, rng, frames, height, width)
    write_mp4(render_video(scene, trajectory), out / f"{demo_name(label, group, clip)}.mp4", fps)


def make_demo_dataset(
    out: str | Path,
    *,
    videos_per_class: int = 24,
    seed: int = 0,
    frames: int = 32,
    height: int = 128,
    width: int = 160,
    fps: int = 25,
    progress: bool = True,
    workers: int | None = None,
    clips_per_group: int = CLIPS_PER_GROUP,
) -> dict:
    """Write the demo set under ``out``: ``<Class>/v_<Class>_gGG_cCC.mp4``, ``classInd.txt``,
    ``trainlist01.txt`` and ``testlist01.txt``. The same arguments give the same lists and
    frames, and but for x264's rare exceptions (:func:`write_mp4`) the same bytes.

    ``clips_per_group`` videos of each class share a group's scene (UCF101's groups hold 4-7);
    fewer per group means more scenes for the same number of videos.
    ``workers`` processes render and encode (default: one per core, at most 4).
    Returns a summary: classes, videos, train and test counts, and the test groups.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    if videos_per_class < 2:
        raise ValueError(
            f"videos_per_class must be at least 2 (one train, one test), got {videos_per_class}"
        )
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {height}x{width}")
    out = Path(out)
    if clips_per_group < 1:
        raise ValueError(f"clips_per_group must be at least 1, got {clips_per_group}")
    groups = -(-videos_per_class // clips_per_group)
    if groups < 2:  # too few videos for whole groups on both sides: one clip per group
        groups, per_group = videos_per_class, 1
    else:
        per_group = clips_per_group
    test_groups = max(1, round(groups * TEST_GROUP_FRACTION))
    train_lines, test_lines = [], []
    jobs = []
    for ci, label in enumerate(DEMO_CLASSES):
        for i in range(videos_per_class):
            group, clip = i // per_group + 1, i % per_group + 1
            jobs.append((ci, label, group, clip))
    for ci, label, group, clip in jobs:
        name = demo_name(label, group, clip)
        (out / label).mkdir(parents=True, exist_ok=True)
        if group <= test_groups:
            test_lines.append(f"{name}.mp4")
        else:
            train_lines.append(f"{name}.mp4 {ci + 1}")
    # Each video is a function of (seed, class, group, clip) alone, so processes can write
    # them in any order.
    work = [
        (out, seed, ci, label, group, clip, frames, height, width, fps)
        for ci, label, group, clip in jobs
    ]
    bar = progress_bar(total=len(work), desc="demo videos", unit="video", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(_write_demo_video, work, chunksize=8):
                bar.update()
    else:
        for item in work:
            _write_demo_video(item)
            bar.update()
    bar.close()
    (out / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(DEMO_CLASSES)))
    (out / "trainlist01.txt").write_text("\n".join(train_lines) + "\n")
    (out / "testlist01.txt").write_text("\n".join(test_lines) + "\n")
    return {
        "root": str(out),
        "classes": list(DEMO_CLASSES),
        "videos": len(jobs),
        "train": len(train_lines),
        "test": len(test_lines),
        "test_groups": list(range(1, test_groups + 1)),
    }
