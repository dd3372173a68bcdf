"""The demo dataset: its files and lists, its determinism, and that it needs time to solve."""

from __future__ import annotations

import math

import decord
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from raylab.data.annotations import read_annotations
from raylab.data.synthetic import (
    DEMO_CLASSES,
    OBJECT_SHAPE,
    make_demo_dataset,
    make_scene,
    render_frame,
    render_video,
    sample_trajectory,
    write_mp4,
)

PAIRS = [DEMO_CLASSES[i : i + 2] for i in range(0, len(DEMO_CLASSES), 2)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    summary = make_demo_dataset(
        root, videos_per_class=8, seed=5, frames=12, height=48, width=64, progress=False
    )
    return root, summary


def test_ucf101_layout_lists_and_group_split(demo):
    root, summary = demo
    assert (root / "classInd.txt").read_text().split() == [
        tok for i, c in enumerate(DEMO_CLASSES) for tok in (str(i + 1), c)
    ]
    ann = read_annotations("ucf101", root)
    assert ann.classes == list(DEMO_CLASSES)
    train = [e for e in ann.entries if e.split == "train"]
    test = [e for e in ann.entries if e.split == "val"]
    assert len(train) == summary["train"] and len(test) == summary["test"]
    assert len(train) + len(test) == 8 * len(DEMO_CLASSES)
    group = lambda e: e.path.split("_g")[1][:2]  # noqa: E731
    assert {group(e) for e in train}.isdisjoint({group(e) for e in test})
    assert {e.label_name for e in test} == {e.label_name for e in train} == set(DEMO_CLASSES)
    for e in ann.entries:
        assert e.path.startswith(f"{e.label_name}/v_{e.label_name}_g")


def test_files_are_real_h264_with_the_asked_shape(demo):
    root, _ = demo
    files = sorted(root.glob("*/*.mp4"))
    assert len(files) == 8 * len(DEMO_CLASSES)
    import av

    with av.open(str(files[0])) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.video[0].format.name == "yuv420p"
    vr = decord.VideoReader(str(files[-1]))
    assert len(vr) == 12
    assert vr[0].shape == (48, 64, 3)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(videos_per_class=2, frames=4, height=32, width=32, progress=False)
    make_demo_dataset(tmp_path / "a", seed=1, **kw)
    make_demo_dataset(tmp_path / "b", seed=1, **kw)
    make_demo_dataset(tmp_path / "c", seed=2, **kw)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files) == 2 * len(DEMO_CLASSES) + 3
    videos = [f for f in files if f.suffix == ".mp4"]
    for f in set(files) - set(videos):  # the lists
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    # x264 rarely encodes identical frames differently (write_mp4's docstring): nearly every
    # MP4 is byte-identical and every one decodes to the same frames within a few levels.
    same = [(tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in videos]
    assert sum(same) >= len(videos) - 2, [
        str(f) for f, s in zip(videos, same, strict=True) if not s
    ]
    for f in videos:
        a, b = (decord.VideoReader(str(tmp_path / d / f)).get_batch([0, 1, 2, 3]) for d in "ab")
        diff = np.abs(a.asnumpy().astype(np.int16) - b.asnumpy())
        assert diff.mean() < 3.0, (f, diff.mean())  # 1.1 the worst seen
    assert all(
        (tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in videos
    )


def test_too_few_videos_or_odd_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="videos_per_class"):
        make_demo_dataset(tmp_path, videos_per_class=1)
    with pytest.raises(ValueError, match="even"):
        make_demo_dataset(tmp_path, videos_per_class=2, height=33)
    with pytest.raises(ValueError, match="unknown demo class 'Jump'"):
        sample_trajectory("Jump", np.random.default_rng(0), 8, 32, 32)


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: "/".join(p))
def test_each_class_is_its_partner_played_backwards(pair):
    a = sample_trajectory(pair[0], np.random.default_rng(7), 10, 96, 128)
    b = sample_trajectory(pair[1], np.random.default_rng(7), 10, 96, 128)
    np.testing.assert_allclose(a, b[::-1])
    moving = np.flatnonzero(np.ptp(a, axis=0) > 0)
    assert len(moving) == 1  # exactly one attribute changes


def test_object_stays_inside_the_frame():
    rng = np.random.default_rng(0)
    for label in DEMO_CLASSES * 20:
        x, y, _, log_scale = sample_trajectory(label, rng, 16, 48, 80).T
        half_diagonal = 0.24 * 48 * np.exp(log_scale) * math.hypot(*OBJECT_SHAPE) / 2
        assert (x - half_diagonal >= 0).all() and (x + half_diagonal <= 80).all()
        assert (y - half_diagonal >= 0).all() and (y + half_diagonal <= 48).all()


def test_clockwise_is_clockwise_on_screen():
    scene = make_scene(np.random.default_rng(0), 64, 64)
    marker = scene.sprite.copy()
    marker[:] = 0.0
    marker[2:8, -8:-2] = 255.0  # a bright mark in the object's top-right corner
    scene = type(scene)(background=np.zeros_like(scene.background), sprite=marker)

    def mark(angle):
        ys, xs = np.nonzero(render_frame(scene, 32, 32, angle, 0.0)[..., 0] > 128)
        return xs.mean() - 32, ys.mean() - 32  # offset from the centre, y down

    x0, y0 = mark(0.0)
    x1, y1 = mark(math.pi / 2)
    assert x0 > 0 and y0 < 0  # top right
    assert x1 > 0 and y1 > 0  # a quarter turn clockwise puts it bottom right


@pytest.mark.parametrize(
    "label, measure, grows",
    [
        ("MoveRight", "x", True),
        ("MoveLeft", "x", False),
        ("MoveDown", "y", True),
        ("MoveUp", "y", False),
        ("Grow", "area", True),
        ("Shrink", "area", False),
    ],
)
def test_decoded_video_moves_the_way_its_class_says(tmp_path, label, measure, grows):
    scene = make_scene(np.random.default_rng(3), 96, 128)
    trajectory = sample_trajectory(label, np.random.default_rng(4), 8, 96, 128)
    write_mp4(render_video(scene, trajectory), tmp_path / "v.mp4")
    frames = decord.VideoReader(str(tmp_path / "v.mp4")).get_batch(range(8)).asnumpy()
    diff = np.abs(frames.astype(int) - scene.background.astype(int)).sum(-1) > 60
    ys, xs = np.nonzero(diff[0])
    ye, xe = np.nonzero(diff[-1])
    first = {"x": xs.mean(), "y": ys.mean(), "area": len(xs)}[measure]
    last = {"x": xe.mean(), "y": ye.mean(), "area": len(xe)}[measure]
    assert (last > first) == grows, (first, last)


@pytest.mark.parametrize("label, clockwise", [("RotateClockwise", 1), ("RotateAnticlockwise", -1)])
@pytest.mark.parametrize("seed", [5, 6])
def test_turn_shows_in_the_silhouette_at_the_smallest_size(tmp_path, label, clockwise, seed):
    # The smallest object (scale 0.6) in a 48x64 video, the size the demo's 32 px crops
    # come from: the bar's long axis, read off the decoded frames, turns the class's way.
    h, w = 48, 64
    scene = make_scene(np.random.default_rng(seed), h, w)
    trajectory = sample_trajectory(label, np.random.default_rng(seed), 16, h, w)
    trajectory[:, 3] = math.log(0.6)
    write_mp4(render_video(scene, trajectory), tmp_path / "v.mp4")
    frames = decord.VideoReader(str(tmp_path / "v.mp4")).get_batch(range(16)).asnumpy()
    axes = []
    for frame in frames.astype(int):
        ys, xs = np.nonzero(np.abs(frame - scene.background).sum(-1) > 60)
        dx, dy = xs - xs.mean(), ys - ys.mean()
        # Orientation of the long axis from second moments, doubled to be unique mod 2 pi.
        axes.append(math.atan2(2 * (dx * dy).mean(), (dx * dx).mean() - (dy * dy).mean()))
    turned = (np.unwrap(axes)[-1] - axes[0]) / 2  # y points down: positive is clockwise
    expected = trajectory[-1, 2] - trajectory[0, 2]
    assert turned * clockwise > 0, (turned, expected)
    assert abs(turned - expected) < 0.35, (turned, expected)


def _seen(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    """What a rendered frame shows of its object, measured from its pixels: the centroid,
    log area and orientation (doubled angle of the second moments) of where it differs
    from the background."""
    mask = np.abs(frame.astype(np.int16) - background.astype(np.int16)).max(-1) > 12
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean(), ys.mean()
    mxx, myy, mxy = ((xs - cx) ** 2).mean(), ((ys - cy) ** 2).mean(), ((xs - cx) * (ys - cy)).mean()
    return np.array([cx, cy, math.log(len(xs)), math.atan2(2 * mxy, mxx - myy)])


def _frames_at_random_times(n_scenes: int, gap: int):
    """From a video of every class in each scene: a frame at a random time, its state, and
    what that frame and the one ``gap`` frames on show of the object (:func:`_seen`: the
    first, and how the second differs)."""
    singles, states, seen_pairs, labels = [], [], [], []
    h, w, t = 48, 64, 16

    def small(frame):  # 12x16 colour thumbnail, the input a linear frame model would see
        return frame.reshape(12, 4, 16, 4, 3).mean((1, 3)).ravel() / 255

    def describe(s):
        return [s[0], s[1], math.sin(s[2]), math.cos(s[2]), s[3]]

    for g in range(n_scenes):
        scene = make_scene(np.random.default_rng([9, g]), h, w)
        for ci, label in enumerate(DEMO_CLASSES):
            rng = np.random.default_rng([9, g, ci])
            traj = sample_trajectory(label, rng, t, h, w)
            i = rng.integers(0, t - gap)
            singles.append(small(render_frame(scene, *traj[i]).astype(np.float32)))
            states.append(describe(traj[i]))
            first = _seen(render_frame(scene, *traj[i]), scene.background)
            moved = _seen(render_frame(scene, *traj[i + gap]), scene.background) - first
            moved[3] = math.remainder(moved[3], 2 * math.pi)
            seen_pairs.append(np.concatenate([first, moved]))
            labels.append(ci)
    return np.array(singles), np.array(states), np.array(seen_pairs), np.array(labels)


def test_one_frame_tells_nothing_two_frames_tell_everything():
    pixels, states, seen_pairs, labels = _frames_at_random_times(n_scenes=30, gap=6)
    chance = 1 / len(DEMO_CLASSES)
    forest = RandomForestClassifier(n_estimators=100, random_state=0)
    one_state = cross_val_score(forest, states, labels, cv=5).mean()
    # Two rendered frames: what their pixels show of the object, not the trajectory behind.
    two_frames = cross_val_score(forest, seen_pairs, labels, cv=5).mean()
    one_image = cross_val_score(LogisticRegression(max_iter=300), pixels, labels, cv=5).mean()
    assert one_state < chance + 0.1, one_state
    assert one_image < chance + 0.1, one_image
    assert two_frames > 0.9, two_frames
