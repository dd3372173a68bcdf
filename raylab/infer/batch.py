"""The batch-inference routine every inference job shares.

Clip rows (the test views of a split's shards, or of source video files) flow through a
pool of model actors with Ray Data, and come back to the driver a batch at a time, with the
placeholder rows of videos that failed to decode marked apart. Where decoding and the
model run is one object, :class:`InferenceResources`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raylab.config import ClipConfig


@dataclass(frozen=True)
class InferenceResources:
    """Where and how batch inference runs."""

    predictors: int = 1  # model actors
    use_gpu: bool = False  # one GPU per actor
    batch_size: int = 16  # clips per forward pass
    decoders: int | None = None  # concurrent decode tasks; None: as free CPUs allow
    decoder_cpus: float = 1.0  # per decode task
    decoder_resource: str | None = None  # custom resource of decoder nodes, e.g. "decoder"
    predictor_cpus: float = 1.0  # per model actor


def test_views(shards: str | Path, split: str, clip: ClipConfig, resources: InferenceResources):
    """The ``clip.test_clips`` x ``clip.test_crops`` test views of every video of ``split``."""
    from raylab.data.pipeline import clip_dataset

    return clip_dataset(
        shards,
        split,
        clip,
        train=False,
        decoders=resources.decoders,
        decoder_cpus=resources.decoder_cpus,
        decoder_resource=resources.decoder_resource,
    )


def through_model(ds, actor: type, kwargs: dict, resources: InferenceResources):
    """``ds``'s rows through a pool of ``actor(**kwargs)`` (a ``map_batches`` callable class),
    ``resources.batch_size`` rows a call."""
    import ray

    return ds.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        batch_size=resources.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=resources.predictors),
        num_gpus=1 if resources.use_gpu else 0,
        num_cpus=resources.predictor_cpus,
    )


def batches(ds) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Each output batch of ``ds`` on the driver, with the mask of its decoded rows (False
    for the one placeholder row of a video that failed to decode, label -1)."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield batch, batch["label"] >= 0
