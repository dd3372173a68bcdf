"""Features of a layer per video, and the linear SVM / PCA / t-SNE analysis on them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raylab.config import RGB_MEAN, RGB_STD, ClipConfig, normalise
from raylab.infer.batch import InferenceResources
from raylab.infer.features import (
    ClipAverager,
    FeatureExtractor,
    ModelSource,
    average_clips,
    default_layer,
    extract_features,
    final_classifier,
    read_features,
    resolve_layer,
    write_features,
)
from raylab.models import build_model


def _source(tmp_path, name: str, num_classes: int = 8, **options) -> tuple[ModelSource, object]:
    """A zoo model with fresh weights saved as a plain state dict, and the model itself."""
    torch.manual_seed(0)
    model = build_model(name, num_classes, **options).eval()
    path = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), path)
    return ModelSource(
        model=name, options=options, num_classes=num_classes, weights=str(path)
    ), model


def _batch(clips: np.ndarray, labels=None) -> dict[str, np.ndarray]:
    n = len(clips)
    return {
        "clip": clips,
        "label": np.asarray(labels if labels is not None else [0] * n, np.int64),
        "video_id": np.asarray([f"v{i}" for i in range(n)], dtype=object),
        "view": np.zeros(n, np.int32),
    }


def _normalised(clip: np.ndarray) -> torch.Tensor:
    mean, std = torch.tensor(RGB_MEAN), torch.tensor(RGB_STD)
    return normalise(torch.from_numpy(clip), mean, std)


def test_the_hook_captures_the_named_layer_as_a_direct_forward(tmp_path):
    # The published C3D head (fc6 needs 16 x 112 x 112) at width 1/8.
    source, model = _source(tmp_path, "c3d", width=0.125)
    clip = np.random.default_rng(0).integers(0, 256, (2, 16, 112, 112, 3), dtype=np.uint8)
    x = _normalised(clip)
    with torch.no_grad():
        pool5 = model.features(x)
        fc6_pre = model.classifier.fc6.fc(model.classifier.flatten(pool5))
        fc6 = model.classifier.fc6(model.classifier.flatten(pool5))
    assert (fc6_pre < 0).any()  # so the ReLU after it matters below

    for layer, expected in [
        ("fc6", fc6),
        ("classifier.fc6", fc6),
        ("classifier.fc6.fc", fc6_pre),  # kept before the in-place ReLU that follows it
        ("features.pool5", pool5.flatten(1)),
        ("fc7:input", fc6),
    ]:
        out = FeatureExtractor(source, layer)(_batch(clip))
        assert out["feature"].dtype == np.float32
        assert out["feature"].shape == (2, expected.shape[1]), layer
        np.testing.assert_allclose(out["feature"], expected.numpy(), rtol=1e-4, atol=1e-5)
        assert list(out["video_id"]) == ["v0", "v1"]


def test_placeholder_rows_are_not_run_and_get_zero_features(tmp_path):
    source, _ = _source(tmp_path, "c3d", width=0.125, head="pooled")
    clip = np.random.default_rng(1).integers(0, 256, (3, 16, 32, 32, 3), dtype=np.uint8)
    out = FeatureExtractor(source)(_batch(clip, labels=[2, -1, 5]))
    assert out["feature"].shape == (3, 64)
    assert not out["feature"][1].any()
    assert out["feature"][0].any() and out["feature"][2].any()


def test_default_layer_is_fc6_for_c3d_and_the_pooled_classifier_input_otherwise(tmp_path):
    c3d = build_model("c3d", 8, width=0.125)
    assert str(default_layer(c3d)) == "classifier.fc6"
    pooled = build_model("c3d", 8, width=0.125, head="pooled")
    assert str(default_layer(pooled)) == "classifier.fc:input:pool"

    # TSN: per-frame fc inputs, averaged over the clip's frames into one vector.
    source, tsn = _source(tmp_path, "tsn", width=0.125)
    assert str(default_layer(tsn)) == "fc:input:pool"
    clip = np.random.default_rng(2).integers(0, 256, (2, 4, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        frames = tsn.forward_features(_normalised(clip))
        n, t = frames.shape[:2]
        expected = tsn.avgpool(frames.flatten(0, 1)).flatten(1).unflatten(0, (n, t)).mean(1)
    out = FeatureExtractor(source)(_batch(clip))["feature"]
    assert out.shape == (2, tsn.fc.in_features)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-4, atol=1e-5)

    # I3D's classifier is a 1x1x1 conv: its input pooled over the remaining time steps.
    source, i3d = _source(tmp_path, "i3d", width=0.125)
    assert str(default_layer(i3d)) == "logits:input:pool"
    clip = np.random.default_rng(3).integers(0, 256, (1, 16, 32, 32, 3), dtype=np.uint8)
    out = FeatureExtractor(source)(_batch(clip))["feature"]
    assert out.shape == (1, i3d.logits.in_channels)


@pytest.mark.parametrize("name", ["c3d", "i3d", "t3d121", "stm", "tsn"])
def test_the_final_classifier_is_the_last_linear_layer_that_runs(name):
    """The default rule holds for every family: the module it names is the last linear (or
    1x1 conv) layer a forward pass calls, and the one producing the logits."""
    options = {"width": 0.125} | ({"head": "pooled"} if name == "c3d" else {})
    model = build_model(name, 5, **options).eval()
    ran: list[str] = []
    hooks = [
        m.register_forward_hook(lambda *_a, n=n: ran.append(n))
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear | torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d)
    ]
    t, h, w = (max(s, 8) for s in getattr(model, "min_input", (16, 16, 16)))
    with torch.no_grad():
        model(torch.zeros(1, 3, t, max(h, 32), max(w, 32)))
    for hook in hooks:
        hook.remove()
    assert final_classifier(model) == ran[-1]


def test_an_unknown_layer_is_a_clear_error_listing_close_names():
    model = build_model("c3d", 8, width=0.125)
    with pytest.raises(ValueError, match="no layer 'fc66'.*classifier.fc6"):
        resolve_layer(model, "fc66")
    with pytest.raises(ValueError, match="ambiguous.*classifier.fc6.fc.*classifier.fc7.fc"):
        resolve_layer(model, "fc")
    with pytest.raises(ValueError, match="unknown suffix 'output'"):
        resolve_layer(model, "fc6:output")
    assert resolve_layer(model, "conv5b").name == "features.conv5b"


def test_clips_are_averaged_per_video_and_l2_normalised():
    ids = ["b", "a", "b", "a", "c"]
    labels = [1, 0, 1, 0, 2]
    feats = np.array([[3, 0], [1, 1], [1, 0], [1, 1], [0, -5]], np.float32)
    got = average_clips(ids, labels, feats, splits=["val", "train", "val", "train", "train"])
    assert got.video_ids == ["a", "c", "b"]  # sorted by (split, video_id)
    assert got.splits == ["train", "train", "val"]
    assert got.labels.tolist() == [0, 2, 1]
    np.testing.assert_allclose(got.features, [[0.5**0.5, 0.5**0.5], [0, -1], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, atol=1e-6)

    acc = ClipAverager()
    acc.add(["x"], [0], np.ones((1, 2)))
    with pytest.raises(ValueError, match="video x"):
        acc.add(["x"], [1], np.ones((1, 2)))


def test_features_of_every_video_from_the_shards(damaged_shards, tmp_path):
    """Ray Data over real shards: one unit-norm row per decodable video, labels as stored, and
    the damaged videos dropped and counted."""
    shards, damaged = damaged_shards
    source = ModelSource(model="c3d", options={"width": 0.125, "head": "pooled"}, num_classes=8)
    clip = ClipConfig(frames=16, size=32, test_clips=2)
    resources = InferenceResources(decoder_cpus=0.5, predictor_cpus=0.5)
    got = extract_features(shards, source, clip, resources=resources)
    assert got.layer == "classifier.fc:input:pool" and got.dim == 64
    assert got.decode_failures == {s: [v] for s, v in damaged.items()}
    for split in ("train", "val"):
        table = pq.read_table(shards / split, columns=["video_id", "label"])
        stored = dict(zip(table["video_id"].to_pylist(), table["label"].to_pylist(), strict=True))
        del stored[damaged[split]]
        rows = zip(got.video_ids, got.labels, got.splits, strict=True)
        mine = {v: int(y) for v, y, s in rows if s == split}
        assert mine == stored
    assert len(set(got.video_ids)) == len(got.video_ids)
    np.testing.assert_allclose(np.linalg.norm(got.features, axis=1), 1.0, atol=1e-5)

    path = write_features(got, tmp_path, {"model": "c3d"})
    schema = pq.read_schema(path)
    assert schema.names == ["video_id", "label", "split", "feature"]
    kind = schema.field("feature").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 64
    assert kind.value_type == pa.float32()
    back = read_features(path)
    assert back.video_ids == got.video_ids and back.layer == got.layer
    np.testing.assert_array_equal(back.features, got.features)
