import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.data.sampling import clip_indices, dense_clip_indices, sample_rng, segment_indices


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    num_frames=st.integers(1, 400),
    frames=st.integers(1, 64),
    stride=st.integers(1, 8),
    num_clips=st.integers(1, 10),
    train=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_dense_indices_in_range_with_stride(num_frames, frames, stride, num_clips, train, seed):
    idx = dense_clip_indices(
        num_frames,
        frames,
        stride,
        train=train,
        num_clips=num_clips,
        rng=np.random.default_rng(seed),
    )
    assert idx.shape == (num_clips, frames)
    assert idx.dtype == np.int64
    assert idx.min() >= 0 and idx.max() < num_frames
    span = (frames - 1) * stride + 1
    if span <= num_frames:
        # No wrap-around: consecutive indices are exactly `stride` apart.
        assert (np.diff(idx, axis=1) == stride).all()
    else:
        # Looped: the clip is the video repeated, read at the stride.
        expected = (idx[:, :1] + np.arange(frames) * stride) % num_frames
        np.testing.assert_array_equal(idx, expected)


def test_short_video_loops():
    idx = dense_clip_indices(3, 16, 1, train=False)
    np.testing.assert_array_equal(idx[0], np.arange(16) % 3)
    seg = segment_indices(3, 8, train=True, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(seg[0], np.arange(8) % 3)


def test_test_clips_are_evenly_spaced_and_cover_the_video():
    idx = dense_clip_indices(100, 16, 2, train=False, num_clips=5)
    starts = idx[:, 0]
    gaps = np.diff(starts)
    assert gaps.min() >= 14 and gaps.max() - gaps.min() <= 1
    assert starts[0] < 10 and idx[-1, -1] > 90
    # One test clip is centred.
    one = dense_clip_indices(100, 16, 2, train=False)
    assert abs((one[0, 0] + one[0, -1]) / 2 - 49.5) <= 1


def test_training_offsets_deterministic_per_seed_epoch_video_and_vary_across_epochs():
    def draw(seed, epoch, vid):
        return dense_clip_indices(300, 16, 2, train=True, rng=sample_rng(seed, epoch, vid))

    np.testing.assert_array_equal(draw(0, 3, "a/b"), draw(0, 3, "a/b"))
    starts = {int(draw(0, e, "a/b")[0, 0]) for e in range(20)}
    assert len(starts) > 10  # epochs see different clips
    # Seeds and videos draw independently.
    assert any(not np.array_equal(draw(0, e, "a/b"), draw(1, e, "a/b")) for e in range(5))
    assert any(not np.array_equal(draw(0, 0, f"v{i}"), draw(0, 0, "other")) for i in range(5))


def test_training_needs_rng():
    with pytest.raises(ValueError, match="rng"):
        dense_clip_indices(10, 4, 1, train=True)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(num_frames=st.integers(1, 300), segments=st.integers(1, 32), seed=st.integers(0, 99))
def test_segments_one_frame_per_segment(num_frames, segments, seed):
    rng = np.random.default_rng(seed)
    for train in (True, False):
        idx = segment_indices(num_frames, segments, train=train, rng=rng)[0]
        assert idx.shape == (segments,)
        assert idx.min() >= 0 and idx.max() < num_frames
        if num_frames >= segments:
            # Each index falls in its own segment, so they strictly increase.
            seg_of = np.floor(idx * segments / num_frames).astype(int)
            np.testing.assert_array_equal(seg_of, np.arange(segments))


def test_segment_test_picks_centres():
    np.testing.assert_array_equal(segment_indices(80, 8, train=False)[0], np.arange(8) * 10 + 4)


def test_clip_indices_dispatch_and_errors():
    assert clip_indices(50, 8, 2, scheme="segments", train=False, num_clips=3).shape == (3, 8)
    assert clip_indices(50, 8, 2, scheme="dense", train=False, num_clips=2).shape == (2, 8)
    with pytest.raises(ValueError, match="unknown sampling scheme"):
        clip_indices(50, 8, 1, scheme="tsm", train=False)
    with pytest.raises(ValueError, match="at least one frame"):
        dense_clip_indices(0, 8, 1, train=False)
