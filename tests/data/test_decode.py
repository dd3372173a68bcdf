import numpy as np
import pytest
from videos import counter_frames, frame_index, write_video

from raylab.data.decode import (
    ClipSpec,
    choose_rendition,
    decode_frames,
    multiscale_crop,
    open_video,
    resize,
    sample_views,
    scaled_size,
    three_crop,
)
from raylab.data.ingest import EncodeParams, encode_video


@pytest.fixture(scope="module")
def counter_mp4(tmp_path_factory):
    """A 38-frame H.264 video re-encoded the way ingest stores it (key frame every 8)."""
    src = write_video(tmp_path_factory.mktemp("v") / "counter.mp4", counter_frames(38, 96, 128))
    return encode_video(src, EncodeParams(short_sides=(64,), keyframe_interval=8))["video_64"]


def test_decode_is_frame_exact_for_any_index_order(counter_mp4):
    reader = open_video(counter_mp4)
    assert len(reader) == 38
    idx = np.array([[5, 17, 3, 30], [37, 0, 17, 17]])
    frames = decode_frames(reader, idx)
    assert frames.shape == (2, 4, 64, 86, 3) and frames.dtype == np.uint8
    got = [[frame_index(f) for f in row] for row in frames]
    assert got == idx.tolist()


def test_decoder_scales_while_decoding(counter_mp4):
    h, w = scaled_size(96, 128, 48)
    assert (h, w) == (48, 64)
    frames = decode_frames(open_video(counter_mp4, height=h, width=w), np.array([9]))
    assert frames.shape == (1, 48, 64, 3)
    assert frame_index(frames[0]) == 9


def test_scaled_size_keeps_aspect_and_even_sides():
    assert scaled_size(272, 640, 128) == (128, 302)
    assert scaled_size(176, 144, 128) == (156, 128)  # portrait
    for h, w in [(101, 333), (720, 1280), (31, 17)]:
        sh, sw = scaled_size(h, w, 112)
        assert min(sh, sw) == 112 and sh % 2 == 0 and sw % 2 == 0


def test_choose_rendition_smallest_large_enough():
    assert choose_rendition([128, 256], 128) == 128
    assert choose_rendition([256, 128], 129) == 256
    with pytest.raises(ValueError, match=r"store \[128, 256\].*--short-side 300"):
        choose_rendition([128, 256], 300)


def test_crops_and_resize():
    clip = np.arange(4 * 60 * 80 * 3, dtype=np.uint32).reshape(4, 60, 80, 3).astype(np.uint8)
    left, centre, right = three_crop(clip, 60)
    np.testing.assert_array_equal(left, clip[:, :, :60])
    np.testing.assert_array_equal(centre, clip[:, :, 10:70])
    np.testing.assert_array_equal(right, clip[:, :, 20:])
    assert resize(clip, 32).shape == (4, 32, 32, 3)
    assert resize(clip, 32).dtype == np.uint8
    rng = np.random.default_rng(0)
    shapes = {multiscale_crop(clip, 48, rng).shape for _ in range(20)}
    assert shapes == {(4, 48, 48, 3)}


def test_whole_height_crops_keep_every_row():
    # Row r of every frame holds the value r: a crop spanning the short side keeps them all.
    clip = np.broadcast_to(np.arange(60, dtype=np.uint8)[None, :, None, None], (2, 60, 80, 3))
    rng = np.random.default_rng(0)
    for _ in range(10):
        view = multiscale_crop(clip, 60, rng, scales=(1.0,))
        assert view.shape == (2, 60, 60, 3)
        np.testing.assert_array_equal(view[0, :, 0, 0], np.arange(60))
    cut = {multiscale_crop(clip, 60, rng)[0, 0, 0, 0] for _ in range(30)}
    assert max(cut) > 0  # the default scales do cut rows off


def test_train_views_jitter_and_eval_views_are_fixed(counter_mp4):
    reader = open_video(counter_mp4, height=64, width=86)
    train = ClipSpec(frames=8, stride=2, size=56, train=True)
    views = [sample_views(reader, train, np.random.default_rng(s))[0] for s in range(6)]
    assert all(v.shape == (8, 56, 56, 3) and v.dtype == np.uint8 for v in views)
    starts = {frame_index(v[0]) for v in views}
    assert len(starts) > 1  # random offsets
    for v in views:
        ids = [frame_index(f) for f in v]
        assert np.all(np.diff(ids) == 2)

    test = ClipSpec(frames=8, stride=2, size=56, train=False, clips=2, crops=3)
    assert test.views == 6
    a = sample_views(reader, test, np.random.default_rng(1))
    b = sample_views(reader, test, np.random.default_rng(2))
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # Views 0-2 are the three crops of clip 0, views 3-5 of clip 1 (later in time).
    assert frame_index(a[0][0]) == frame_index(a[2][0]) < frame_index(a[3][0])


def test_flip_mirrors_when_enabled(real_videos):
    data = encode_video(real_videos["bikes"], EncodeParams(short_sides=(64,)))["video_64"]
    reader = open_video(data)
    spec = ClipSpec(frames=4, size=48, train=True, flip=True, scales=(1.0,), corner_crops=False)
    no_flip = ClipSpec(frames=4, size=48, train=True, scales=(1.0,), corner_crops=False)
    flipped = 0
    for seed in range(8):
        a = sample_views(reader, spec, np.random.default_rng(seed))[0]
        b = sample_views(reader, no_flip, np.random.default_rng(seed))[0]
        if not np.array_equal(a, b):
            np.testing.assert_array_equal(a, b[:, :, ::-1])
            flipped += 1
    assert 0 < flipped < 8


def test_spec_validation():
    with pytest.raises(ValueError, match="crops must be 1"):
        ClipSpec(crops=2)
    with pytest.raises(ValueError, match="smaller than the crop"):
        ClipSpec(size=112, short_side=100)
    for scales in [(), (0.0,), (1.0, 1.2)]:
        with pytest.raises(ValueError, match="crop scales must lie in"):
            ClipSpec(scales=scales)
    assert ClipSpec(size=112).working_short_side == 128
    assert ClipSpec(size=224).working_short_side == 256
