"""jobs/extract_features.py: features of a tiny C3D, a linear SVM, PCA and t-SNE plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def test_extract_features_then_svm(demo_shards, run_job, tmp_path):
    out = tmp_path / "features"
    got = run_job(
        "extract_features.py",
        *("--data", str(demo_shards), "--model", "c3d", "--width", "0.125"),
        *("--frames", "16", "--size", "32", "--clips", "2", "--out", str(out)),
    )
    assert {"svm_accuracy", "metrics", "features", "compactness_plot", "tsne_plot"} <= set(got)
    assert {"layer", "dim"} <= set(got)
    m = got["metrics"]
    assert {"svm_accuracy", "svm_C", "compactness", "videos", "decode_failures"} <= set(m)
    assert 0.0 <= got["svm_accuracy"] == m["svm_accuracy"] <= 1.0
    assert m["decode_failures"] == 0
    # At 16 x 32 x 32 C3D has its pooled head: the pooled input of its classifier, 64-d.
    assert got["layer"] == "classifier.fc:input:pool" and got["dim"] == 64
    assert all(0.0 <= a <= 1.0 for a in m["compactness"].values())

    manifest = json.loads((demo_shards / "manifest.json").read_text())
    assert m["videos"] == {s: n for s, n in manifest["splits"].items() if n}
    table = pq.read_table(got["features"])
    assert table.num_rows == sum(manifest["splits"].values())
    assert len(set(table["video_id"].to_pylist())) == table.num_rows
    feats = np.asarray(table["feature"].to_pylist(), np.float32)
    assert feats.shape == (table.num_rows, 64)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # The SVM's score again, from the written features alone, by scikit-learn: the job's
    # figure is that of its own features, not of anything else.
    from sklearn.svm import LinearSVC

    split = np.asarray(table["split"].to_pylist())
    labels = np.asarray(table["label"].to_pylist())
    scored = m.get("test_split") or ("test" if "test" in split else "val")
    svm = LinearSVC(C=m["svm_C"], max_iter=20000, random_state=0)
    svm.fit(feats[split == "train"], labels[split == "train"])
    again = float((svm.predict(feats[split == scored]) == labels[split == scored]).mean())
    assert got["svm_accuracy"] == again

    record = json.loads((out / "features.json").read_text())
    assert record["layer"] == got["layer"] and record["clip"]["test_clips"] == 2
    assert record["counts"] == m["videos"]
    for key in ("compactness_plot", "tsne_plot"):
        assert Path(got[key]).read_bytes()[:4] == b"\x89PNG"
