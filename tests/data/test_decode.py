import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from videos import counter_frames, frame_index, write_video

from raylab.data.clips import ClipConfig, choose_rendition
from raylab.data.decode import (
    decodable_width,
    decode_frames,
    decord_keeps_width,
    multiscale_crop,
    open_flow,
    open_video,
    resize,
    sample_views,
    scaled_size,
    three_crop,
)
from raylab.data.ingest import EncodeParams, encode_video
from raylab.data.pipeline import FAILED, ClipDecoder
from raylab.data.sampling import clip_indices, sample_rng
from raylab.data.storage import flow_column, rendition_column


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
    clip = ClipConfig(frames=8, stride=2, size=56)
    views = [sample_views(reader, clip, np.random.default_rng(s), True)[0] for s in range(6)]
    assert all(v.shape == (8, 56, 56, 3) and v.dtype == np.uint8 for v in views)
    starts = {frame_index(v[0]) for v in views}
    assert len(starts) > 1  # random offsets
    for v in views:
        ids = [frame_index(f) for f in v]
        assert np.all(np.diff(ids) == 2)

    test = ClipConfig(frames=8, stride=2, size=56, test_clips=2, test_crops=3)
    assert test.views(train=False) == 6
    a = sample_views(reader, test, np.random.default_rng(1), False)
    b = sample_views(reader, test, np.random.default_rng(2), False)
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # Views 0-2 are the three crops of clip 0, views 3-5 of clip 1 (later in time).
    assert frame_index(a[0][0]) == frame_index(a[2][0]) < frame_index(a[3][0])


def test_flip_mirrors_when_enabled(real_videos):
    data = encode_video(real_videos["bikes"], EncodeParams(short_sides=(64,)))["video_64"]
    reader = open_video(data)
    spec = ClipConfig(frames=4, stride=1, size=48, flip=True, crop_scales=(1.0,))
    no_flip = ClipConfig(frames=4, stride=1, size=48, crop_scales=(1.0,))
    flipped = 0
    for seed in range(8):
        a = sample_views(reader, spec, np.random.default_rng(seed), True, corner_crops=False)[0]
        b = sample_views(reader, no_flip, np.random.default_rng(seed), True, corner_crops=False)[0]
        if not np.array_equal(a, b):
            np.testing.assert_array_equal(a, b[:, :, ::-1])
            flipped += 1
    assert 0 < flipped < 8


# Stored geometries: every video the pipeline decodes was written by ingest's encoder at
# (height, width) = scaled_size(source, rendition), then scaled again by decord to the working
# short side. FRAMES is tiny: geometry, not length, is what these tests vary.
FRAMES = 6


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """``stored(height, width, rendition, flow) -> encode_video's row`` for a FRAMES-frame
    counter clip of that source size; each geometry is written and ingested once."""
    root = tmp_path_factory.mktemp("geometries")
    rows: dict[tuple, dict] = {}

    def get(height: int, width: int, rendition: int, flow: bool) -> dict:
        key = (height, width, rendition, flow)
        if key not in rows:
            src = write_video(root / f"{height}x{width}.mp4", counter_frames(FRAMES, height, width))
            params = EncodeParams(short_sides=(rendition,), flow="farneback" if flow else None)
            rows[key] = encode_video(src, params)
        return rows[key]

    return get


def _decode_rows(
    row: dict, spec: ClipConfig, column: str, seed: int = 0, train: bool = True
) -> dict:
    """The pipeline's per-row decode (ClipDecoder, no Ray) of one stored video."""
    batch = {
        "video_id": np.array(["v"], dtype=object),
        "label": np.array([3]),
        "height": np.array([row["height"]]),
        "width": np.array([row["width"]]),
        column: np.array([row[column]], dtype=object),
    }
    return ClipDecoder(spec, train, column, seed=seed, epoch=1)(batch)


@st.composite
def geometries(draw):
    """(source height, width, rendition, ClipConfig, train): even source sides 16-160 (square, portrait,
    landscape, up to 10:1), an even rendition 16-128 and a crop that fits it, either scheme,
    train or multi-view test, RGB or flow."""
    height, width = (2 * draw(st.integers(8, 80)) for _ in range(2))
    rendition = 2 * draw(st.integers(8, 64))
    size = draw(st.integers(8, max(8, rendition * 7 // 8)))
    short_side = draw(st.none() | st.integers(size, rendition))  # None: size * 8 / 7
    train = draw(st.booleans())
    spec = ClipConfig(
        frames=draw(st.integers(1, 8)),
        stride=draw(st.integers(1, 3)),
        size=size,
        scheme=draw(st.sampled_from(["dense", "segments"])),
        test_clips=1 if train else draw(st.integers(1, 2)),
        test_crops=1 if train else draw(st.sampled_from([1, 3])),
        short_side=short_side,
        modality=draw(st.sampled_from(["rgb", "flow"])),
    )
    return height, width, rendition, spec, train


@settings(derandomize=True, max_examples=30, deadline=None)
@given(geometries())
# The run that skipped every video: 80 x 80 sources, crop 64 (decoded 73 x 72).
@example((80, 80, 128, ClipConfig(frames=4, stride=1, size=64), True))
# Renditions whose own width decord mangles (72, 48), decoded at it and scaled from it.
@example((80, 80, 72, ClipConfig(frames=4, stride=1, size=63, test_crops=3), False))
@example(
    (96, 48, 48, ClipConfig(frames=4, stride=1, size=42, scheme="segments", modality="flow"), True)
)
def test_every_stored_geometry_decodes_to_its_views(stored, geometry):
    height, width, rendition, spec, train = geometry
    row = stored(height, width, rendition, spec.modality == "flow")
    assert choose_rendition([rendition], spec.working_short_side) == rendition
    column = (flow_column if spec.modality == "flow" else rendition_column)(rendition)

    # Frames come out at the size asked, widened by at most two pixels (decodable_width).
    h, w = scaled_size(row["height"], row["width"], spec.working_short_side)
    if spec.modality == "flow":
        frames = decode_frames(open_flow(row[column], h, w), np.array([0]))
    else:
        frames = decode_frames(open_video(row[column], h, w), np.array([0]))
    assert frames.shape[:2] == (1, h) and frames.shape[3] == spec.channels
    assert w <= frames.shape[2] <= w + 2

    out = _decode_rows(row, spec, column, train=train)
    assert FAILED not in out["label"]  # the log says why
    views = spec.views(train)
    assert out["clip"].shape == (views, spec.frames, spec.size, spec.size, spec.channels)
    assert list(out["view"]) == list(range(views))
    if spec.modality == "rgb":  # and they hold the sampled frames, in order
        idx = clip_indices(
            FRAMES,
            spec.frames,
            spec.stride,
            scheme=spec.scheme,
            train=train,
            num_clips=1 if train else spec.test_clips,
            rng=sample_rng(0, 1, "v"),
        )
        got = [[frame_index(f) for f in view] for view in out["clip"]]
        assert got == [idx[v // spec.test_crops].tolist() for v in range(views)]


def test_a_square_80_pixel_video_decodes_at_crop_64(tmp_path):
    """The set that trained on nothing: square 80 x 80 H.264, 24 frames, ingested at the
    default rendition, c3d's 16 frames at crop 64 (decoded at 73 x 72, a width decord
    mangled): every training and test view decodes, with the frames it sampled."""
    src = write_video(tmp_path / "square.mp4", counter_frames(24, 80, 80))
    row = encode_video(src, EncodeParams())
    column = rendition_column(EncodeParams().short_sides[0])
    train = _decode_rows(row, ClipConfig(frames=16, stride=1, size=64), column)
    assert train["clip"].shape == (1, 16, 64, 64, 3) and list(train["label"]) == [3]
    clip = ClipConfig(frames=16, stride=1, size=64, test_crops=3)
    test = _decode_rows(row, clip, column, train=False)
    assert test["clip"].shape == (3, 16, 64, 64, 3) and list(test["label"]) == [3] * 3
    assert [frame_index(f) for f in test["clip"][0]] == list(range(4, 20))  # the centre clip


def test_a_rendition_of_a_mangled_width_decodes_at_its_own_size(tmp_path):
    """A 72 x 72 rendition opened without a size comes out 73 wide, three channels."""
    src = write_video(tmp_path / "square.mp4", counter_frames(4, 80, 80))
    data = encode_video(src, EncodeParams(short_sides=(72,)))["video_72"]
    frames = decode_frames(open_video(data), np.array([0, 3]))
    assert frames.shape == (2, 72, 73, 3)
    assert [frame_index(f) for f in frames] == [0, 3]


def test_decodable_widths_are_those_decord_keeps():
    assert [w for w in range(1, 200) if not decord_keeps_width(w)] == [
        *(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 36, 48, 72, 96, 144)
    ]
    assert decodable_width(72) == 73 and decodable_width(72, step=2) == 74
    assert decodable_width(73) == 73 and decodable_width(1280) == 1280
