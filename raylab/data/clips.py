"""What a run's clips are (:class:`ClipConfig`): the data layer's own description of them,
which :class:`raylab.config.TrainConfig` holds and the decode tasks read.

One type from the flags to the decoder: the decode tasks read it with whether they decode a
training pass (one random view a video) or a test pass (``test_clips`` x ``test_crops``
fixed views). Its checks, and the values derived from it (the frames a clip spans, the
short side frames are decoded at, the stored rendition they come from), are here and
nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

# Scales of TSN's multi-scale crop (relative to the short side).
TSN_SCALES: tuple[float, ...] = (1.0, 0.875, 0.75, 0.66)


def check_choices(settings) -> None:
    """Every field of the dataclass ``settings`` that lists ``choices`` in its metadata (the
    flag's choices too, :func:`raylab.jobs.add_config_flags`) holds one of them."""
    for f in fields(settings):
        choices = f.metadata.get("choices")
        value = getattr(settings, f.name)
        if choices is not None and value not in choices:
            allowed = ", ".join(map(repr, choices))
            raise ValueError(f"{f.name} must be one of {allowed}; got {value!r}")


def default_short_side(size: int) -> int:
    """The short side crops of ``size`` are cut from when none is given: ``size * 8 / 7``
    (128 for 112, 256 for 224), the ratio C3D and I3D use."""
    return round(size * 8 / 7)


def choose_rendition(renditions: list[int] | tuple[int, ...], short_side: int) -> int:
    """The smallest stored rendition whose short side is at least ``short_side``.

    Raises ValueError naming the stored renditions when none is large enough: upscaling
    a small rendition would train on blurred frames without anyone noticing.
    """
    fitting = sorted(r for r in renditions if r >= short_side)
    if not fitting:
        raise ValueError(
            f"frames at short side {short_side} need a rendition of at least that size; the "
            f"shards store {sorted(renditions)}: re-ingest with --short-side {short_side} or "
            "use a smaller --size"
        )
    return fitting[0]


@dataclass(frozen=True)
class ClipConfig:
    """What a run's clips are, in training and at test.

    Each setting's meaning is its field's ``metadata["help"]`` (with its ``choices``): the
    jobs' flags are made from them (:func:`raylab.jobs.add_config_flags`).
    """

    frames: int = field(
        default=16, metadata={"help": "frames a clip holds (segments: one from each segment)"}
    )
    stride: int = field(
        default=1, metadata={"help": "frames between sampled frames of a dense clip"}
    )
    size: int = field(default=112, metadata={"help": "crop side in pixels (square crops)"})
    scheme: str = field(
        default="dense",
        metadata={
            "help": "dense clips, or TSN segments (one frame per segment)",
            "choices": ("dense", "segments"),
        },
    )
    modality: str = field(
        default="rgb",
        metadata={
            "help": "rgb, or flow: the 2-channel optical flow stored by ingest --flow (e.g. "
            "I3D's flow stream)",
            "choices": ("rgb", "flow"),
        },
    )
    short_side: int | None = field(
        default=None,
        metadata={
            "help": "short side frames are scaled to before cropping (default: size x 8/7); "
            "the shards need a rendition at least this large"
        },
    )
    crop_scales: tuple[float, ...] = field(
        default=TSN_SCALES,
        metadata={
            "help": "training crop sides relative to the short side (TSN multi-scale crop)",
            "metavar": "S",
        },
    )
    flip: bool = field(
        default=False,
        metadata={
            "help": "random horizontal flips in training (off for direction-sensitive data: "
            "the demo set, Something-Something)"
        },
    )
    test_clips: int = field(
        default=1,
        metadata={"help": "clips per video at validation and test (views: clips x crops)"},
    )
    test_crops: int = field(
        default=1,
        metadata={
            "help": "crops per clip at validation and test: 1, the centre crop; 3, three "
            "crops along the long side",
            "choices": (1, 3),
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scales", tuple(self.crop_scales))
        check_choices(self)
        if self.size < 8 or self.frames < 1 or self.stride < 1 or self.test_clips < 1:
            raise ValueError(f"invalid clip {self}")
        if not self.crop_scales or not all(0 < s <= 1 for s in self.crop_scales):
            raise ValueError(f"crop scales must lie in (0, 1], got {self.crop_scales}")
        if self.short_side is not None and self.short_side < self.size:
            raise ValueError(f"short_side {self.short_side} is smaller than the crop {self.size}")

    @property
    def span(self) -> int:
        """Frames of the video a clip covers: a dense clip's first to last frame (a TSN clip
        takes one frame from each of ``frames`` segments)."""
        if self.scheme == "segments":
            return self.frames
        return (self.frames - 1) * self.stride + 1

    @property
    def test_views(self) -> int:
        """Views per video at validation and test."""
        return self.test_clips * self.test_crops

    @property
    def working_short_side(self) -> int:
        """The short side frames are decoded at before cropping."""
        return self.short_side or default_short_side(self.size)

    def rendition(self, renditions: list[int] | tuple[int, ...]) -> int:
        """The stored rendition the clips are decoded from (a clear error when none fits)."""
        return choose_rendition(renditions, self.working_short_side)

    @property
    def channels(self) -> int:
        """3 for RGB, 2 for flow (x, y)."""
        return 2 if self.modality == "flow" else 3

    def views(self, train: bool) -> int:
        """Views per video a pass decodes: 1 in training, ``test_views`` otherwise."""
        return 1 if train else self.test_views

    def with_test_views(self, clips: int, crops: int) -> ClipConfig:
        """The same clips tested on ``clips`` x ``crops`` views a video."""
        return replace(self, test_clips=clips, test_crops=crops)

    def record(self) -> dict:
        """Every setting as plain JSON values: what a checkpoint keeps as its config's ``clip``."""
        out = asdict(self)
        out["crop_scales"] = list(self.crop_scales)
        return out

    @classmethod
    def from_record(cls, record: dict) -> ClipConfig:
        """The clips a checkpoint recorded; a clear error when it predates this record (its
        settings are not guessed)."""
        missing_settings(cls, record)
        return cls(**{f.name: record[f.name] for f in fields(cls)})


def missing_settings(cls, record: dict) -> None:
    """A clear error when ``record`` lacks one of ``cls``'s settings: it predates them, and
    they are not guessed."""
    missing = [f.name for f in fields(cls) if f.name not in record]
    if missing:
        raise ValueError(
            f"the checkpoint's config does not say its {', '.join(missing)}: it was written "
            "by an older raylab; train it again"
        )
