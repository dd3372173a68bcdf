"""What a run's clips are (:class:`ClipConfig`): the data layer's own description of them,
which :class:`raylab.config.TrainConfig` holds and the decode tasks read.

The values derived from it (the frames a clip spans, the short side frames are decoded at,
the stored rendition they come from) are computed here and nowhere else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from raylab.data.decode import TSN_SCALES, ClipSpec, choose_rendition, default_short_side


@dataclass(frozen=True)
class ClipConfig:
    """What a run's clips are, in training and at test."""

    frames: int = 16
    stride: int = 1  # frames between sampled frames of a dense clip
    size: int = 112  # square crop side
    scheme: str = "dense"  # "dense" clips, or TSN "segments" (one frame per segment)
    modality: str = "rgb"  # "flow": 2-channel optical flow clips (ingest --flow)
    short_side: int | None = None  # frames scaled to this before cropping; None: size * 8/7
    crop_scales: tuple[float, ...] = TSN_SCALES  # training crop sides / short side
    flip: bool = False  # off for direction-sensitive data (the demo set, Something-Something)
    test_clips: int = 1  # views per video at validation and test: clips x crops
    test_crops: int = 1  # 1: the centre crop; 3: three crops along the long side

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop_scales", tuple(self.crop_scales))
        self.spec(train=False)  # the decoder's own checks, raised where the clip is described

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

    def spec(self, train: bool) -> ClipSpec:
        """The decoder's view of these clips: one random view per video when training, the
        ``test_clips`` x ``test_crops`` fixed views otherwise."""
        return ClipSpec(
            frames=self.frames,
            stride=self.stride,
            size=self.size,
            scheme=self.scheme,
            train=train,
            clips=self.test_clips,
            crops=self.test_crops,
            flip=self.flip,
            short_side=self.short_side,
            scales=self.crop_scales,
            modality=self.modality,
        )

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
