"""The batch-inference routine every inference job shares.

Clip rows (the test views of a split's shards, or of source video files) flow through a
pool of model actors with Ray Data, and come back to the driver a batch at a time, with the
placeholder rows of videos that failed to decode marked apart. Where decoding and the
model run is one object, :class:`InferenceResources`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from raylab.config import ClipConfig

if TYPE_CHECKING:
    from raylab.data.storage import Shards


@dataclass(frozen=True)
class InferenceResources:
    """Where and how batch inference runs (each field's ``metadata["help"]`` says, and is
    its flag's help: :func:`raylab.jobs.add_inference_flags`)."""

    predictors: int = field(default=1, metadata={"help": "model actors"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per model actor"})
    batch_size: int = field(default=16, metadata={"help": "clips per forward pass"})
    decoders: int | None = field(
        default=None, metadata={"help": "concurrent decode tasks (default: as CPUs allow)"}
    )
    decoder_cpus: float = field(default=1.0, metadata={"help": "CPUs per decode task"})
    decoder_resource: str | None = field(
        default=None,
        metadata={
            "help": "custom resource of the decoder nodes (cluster.yaml: decoder); decoding "
            "stays there"
        },
    )
    predictor_cpus: float = field(default=1.0, metadata={"help": "CPUs per model actor"})


def test_views(
    shards: str | Path | Shards, split: str, clip: ClipConfig, resources: InferenceResources
):
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
