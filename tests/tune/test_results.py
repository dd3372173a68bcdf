"""An experiment's results on a URI: summarised on this machine and sent back."""

from __future__ import annotations

from raylab.tune.options import TuneOptions
from raylab.tune.results import local_experiment, upload_outputs


def test_results_on_s3_are_summarised_locally_and_sent_back(s3_store, tmp_path, monkeypatch):
    """Results on s3:// (a real S3 endpoint): the trial folders, not the Train checkpoints,
    are copied beside the study (under $RAYLAB_HOME); the outputs written there go back."""
    from raylab.data.storage import storage

    monkeypatch.setenv("RAYLAB_HOME", str(tmp_path / "home"))
    opts = TuneOptions(shards="/s", storage_path=f"{s3_store}/{tmp_path.name}", name="exp")
    assert not opts.local
    fs, root = storage(opts.experiment_dir)
    for name, data in [
        ("run_trial_1/result.json", b'{"epoch": 1}\n'),
        ("train_runs/train-1/checkpoint_0/state.pt", b"x" * 10),
    ]:
        with fs.open_output_stream(f"{root}/{name}") as f:
            f.write(data)
    local = local_experiment(opts)
    assert local == tmp_path / "home" / "studies" / "exp"
    assert (local / "run_trial_1" / "result.json").read_text() == '{"epoch": 1}\n'
    assert not (local / "train_runs").exists()
    (local / "best").mkdir()
    (local / "best" / "weights.pt").write_bytes(b"w")
    (local / "report.html").write_text("<html>")
    upload_outputs(opts, local)
    for name, data in [("best/weights.pt", b"w"), ("report.html", b"<html>")]:
        with fs.open_input_stream(f"{root}/{name}") as f:
            assert f.read() == data
