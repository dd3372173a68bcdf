"""The experiment report: the Pareto front, and report.html from a small real experiment
folder (a real Optuna study in SQLite, Tune-style trial folders, a real PNG), no Ray."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import pytest

from raylab.report import load_trials, pareto_front, write_report

REPO = Path(__file__).resolve().parents[1]
NAME = "exp_report"
PRUNE_REASON = "t3d121 cannot take a 8x64x64 clip: needs T >= 29"
ERROR = "RuntimeError: out of memory while allocating the batch"
REPRODUCE = "python jobs/train.py --data /shards --model t3d --frames 16 --out runs/t3d-best"
# trial id -> (knobs, per-epoch (val_video_top1, train_loss), gmacs, status)
TRIALS = {
    "aaaa0001": (
        {"family": "stm", "stm_stages": "45", "stm_blocks": "all", "frames": 8, "size": 64},
        [(0.30, 2.0), (0.50, 1.5)],
        0.3,
        "done",
    ),
    "aaaa0002": (
        {"family": "t3d", "depth": 169, "frames": 16, "size": 64},
        [(0.40, 1.9), (0.60, 1.2)],
        0.9,
        "done",
    ),
    "aaaa0003": (  # stopped by ASHA after one epoch; dominated by aaaa0001
        {"family": "t3d", "depth": 121, "frames": 32, "size": 64},
        [(0.25, 2.1)],
        0.5,
        "stopped",
    ),
    "aaaa0004": ({"family": "t3d", "depth": 121, "frames": 8, "size": 64}, [], None, "pruned"),
    "aaaa0005": ({"family": "stm", "stm_stages": "2345", "stm_blocks": "first"}, [], None, "error"),
}


def make_experiment(root: Path) -> Path:
    """An experiment folder as jobs/tune_t3d.py leaves it, with max_epochs 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    exp = root / NAME
    exp.mkdir(parents=True)
    (exp / "options.json").write_text(json.dumps({"name": NAME, "max_epochs": 2}))
    study = optuna.create_study(
        study_name=NAME, storage=f"sqlite:///{exp / 'optuna.db'}", direction="maximize"
    )
    choices = {
        "family": ["t3d", "stm"],
        "depth": [121, 169, 201],
        "stm_stages": ["2345", "45"],
        "stm_blocks": ["all", "first"],
        "frames": [8, 16, 32],
        "size": [64, 112],
    }
    rows = []
    for n, (trial_id, (knobs, epochs, gmacs, status)) in enumerate(TRIALS.items()):
        params = knobs | {"stride": 1, "lr": 1e-3 * (n + 1), "weight_decay": 1e-4}
        folder = exp / f"run_trial_{trial_id}_{n + 1}_family={knobs['family']}_2026-01-01"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
        lines = [
            {
                "epoch": i,
                "training_iteration": i,
                "trial_id": trial_id,
                "val_video_top1": top1,
                "val_video_top5": min(1.0, top1 + 0.3),
                "val_clip_acc": top1,
                "train_loss": loss,
                "gmacs": gmacs,
                "params_m": 0.5,
                "clips_per_s": 10.0 + i,
                "batch_size": 8,
                "memory_gib": 0.7,
                "pruned": False,
                "done": i == len(epochs),
            }
            for i, (top1, loss) in enumerate(epochs, start=1)
        ]
        if status == "pruned":
            lines = [{"pruned": True, "prune_reason": PRUNE_REASON, "training_iteration": 1}]
            lines[0] |= {"trial_id": trial_id, "done": False}
        if status == "error":
            (folder / "error.txt").write_text(f"Traceback (most recent call last):\n{ERROR}\n")
        (folder / "result.json").write_text("".join(json.dumps(x) + "\n" for x in lines))

        dists = {k: CategoricalDistribution(choices[k]) for k in knobs}
        dists |= {"stride": CategoricalDistribution([1, 2])}
        dists |= {k: FloatDistribution(1e-5, 1e-1, log=True) for k in ("lr", "weight_decay")}
        state = {
            "pruned": optuna.trial.TrialState.PRUNED,
            "error": optuna.trial.TrialState.FAIL,
        }.get(status, optuna.trial.TrialState.COMPLETE)
        study.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dists,
                value=epochs[-1][0] if state == optuna.trial.TrialState.COMPLETE else None,
                intermediate_values={i: top1 for i, (top1, _) in enumerate(epochs, start=1)},
                user_attrs={"prune_reason": PRUNE_REASON} if status == "pruned" else {},
                state=state,
            )
        )

        # trials.json records where the trials ran (on the cluster), not this folder.
        row = {"trial_id": trial_id, "path": f"/cluster/results/{NAME}/{folder.name}"}
        row |= params | {"status": status}
        if epochs:
            best = max(lines, key=lambda x: x["val_video_top1"])
            row |= {k: best[k] for k in ("val_video_top1", "val_video_top5", "gmacs")}
            row |= {"params_m": 0.5, "batch_size": 8, "clips_per_s": 11.0}
            row |= {"best_epoch": best["epoch"], "epochs": len(epochs)}
        row |= {"prune_reason": PRUNE_REASON} if status == "pruned" else {}
        row |= {"error": ERROR} if status == "error" else {}
        rows.append(row)
    (exp / "trials.json").write_text(json.dumps(rows, indent=2))

    best_knobs = TRIALS["aaaa0002"][0]
    summary = {
        "best_config": best_knobs,
        "metrics": {"val_video_top1": 0.6, "val_video_top5": 0.9, "gmacs": 0.9},
        "best_trial": "aaaa0002",
        "reproduce": REPRODUCE,
    }
    (exp / "summary.json").write_text(json.dumps(summary))
    (exp / "best").mkdir()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[3, 1], [0, 4]])
    fig.savefig(exp / "best" / "confusion.png")
    plt.close(fig)
    per_class = {"per_class_acc": {"Walking": 0.75, "Running": 1.0}, "video_top1": 0.875}
    (exp / "best" / "evaluation.json").write_text(json.dumps(per_class))
    return exp


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return make_experiment(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(experiment) -> str:
    path = write_report(experiment)
    assert path == experiment / "report.html"
    return path.read_text()


def copy_of(experiment: Path, tmp_path: Path) -> Path:
    """A copy under the same folder name: the name is the study's."""
    return Path(
        shutil.copytree(experiment, tmp_path / NAME, ignore=shutil.ignore_patterns("*.html"))
    )


def test_pareto_front_keeps_the_non_dominated_points():
    assert pareto_front([]) == []
    assert pareto_front([(1.0, 0.5)]) == [0]
    # (2, .4) costs more for less; (3, .6) costs more for the same accuracy as (2, .6).
    assert pareto_front([(1.0, 0.5), (2.0, 0.4), (2.0, 0.6), (3.0, 0.6)]) == [0, 2]
    # A trade-off curve, given in any order, is all front.
    assert pareto_front([(3.0, 0.9), (1.0, 0.2), (2.0, 0.7)]) == [0, 1, 2]


def test_pareto_front_ties():
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points: both kept
    assert pareto_front([(1.0, 0.5), (1.0, 0.7)]) == [1]  # same cost: the more accurate
    assert pareto_front([(2.0, 0.5), (1.0, 0.5)]) == [1]  # same accuracy: the cheaper
    assert pareto_front([(1.0, 0.5), (1.0, 0.5), (0.5, 0.5)]) == [2]


def test_report_has_every_section_in_order(report):
    titles = ["Best trial", "Trials", "Accuracy vs cost", "Learning curves", "Search", "Inspect"]
    positions = [report.index(f"<h2>{t}</h2>") for t in titles]
    assert positions == sorted(positions)
    assert report.index(f"Experiment {NAME}") < positions[0]
    assert "5 trials: 2 done, 1 stopped, 1 pruned, 1 error" in report
    assert "Best trial aaaa0002" in report


def test_report_is_self_contained(report):
    # Pareto, two learning curves and Optuna's four plots; plotly.js inlined exactly once.
    assert report.count('class="plotly-graph-div"') == 7
    assert report.count("<script>/**\n* plotly.js") == 1
    assert "<script src=" not in report
    assert report.count("<img alt='confusion matrix' src='data:image/png;base64,iVBORw0KGgo") == 1
    for title in ("Optimisation history", "Parallel coordinates", "Parameter importances"):
        assert f"<h3>{title}</h3>\n<div" in report
    assert "<h3>Intermediate values</h3>\n<div" in report


def test_report_best_trial_and_table(report):
    assert f"<pre>{REPRODUCE}</pre>" in report
    assert "<td>Walking</td><td class='num'>0.750</td>" in report
    for trial_id in TRIALS:
        assert f"<td>{trial_id}</td>" in report
    assert escape(PRUNE_REASON) in report and escape(ERROR) in report
    # Sorted by accuracy, the unscored after, the pruned last.
    order = [report.index(f"<td>{t}</td>") for t in ("aaaa0002", "aaaa0001", "aaaa0003")]
    assert order == sorted(order)
    assert report.index("<td>aaaa0005</td>") < report.index("<td>aaaa0004</td>")
    assert "<td class='num'>0.600</td>" in report  # accuracies to 3 decimals
    assert "<td class='num'>1.00e-03</td>" in report  # learning rates in e-notation
    assert "Non-dominated, cheapest first: aaaa0001, aaaa0002." in report


def test_report_inspect_commands(report, experiment):
    assert f"optuna-dashboard sqlite:///{experiment.resolve() / 'optuna.db'}" in report
    assert f"tensorboard --logdir {experiment.resolve()}" in report
    assert "http://127.0.0.1:8265" in report


def test_report_says_why_a_plot_is_missing(experiment, tmp_path):
    import optuna

    exp = copy_of(experiment, tmp_path)
    storage = f"sqlite:///{exp / 'optuna.db'}"
    optuna.delete_study(study_name=NAME, storage=storage)
    optuna.create_study(study_name=NAME, storage=storage, direction="maximize")
    html = write_report(exp).read_text()
    assert "importances need at least 2 completed trials" in html
    assert html.count("Not drawn:") == 4
    assert html.count('class="plotly-graph-div"') == 3  # Pareto and the learning curves
    (exp / "optuna.db").unlink()
    assert "No study:" in write_report(exp).read_text()


def test_report_without_summary_rebuilds_from_trial_folders(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    for name in ("trials.json", "summary.json"):
        (exp / name).unlink()
    shutil.rmtree(exp / "best")
    rows = {r["trial_id"]: r for r in load_trials(exp)}
    assert {t: r["status"] for t, r in rows.items()} == {t: v[3] for t, v in TRIALS.items()}
    assert rows["aaaa0002"]["val_video_top1"] == 0.6 and rows["aaaa0002"]["best_epoch"] == 2
    assert rows["aaaa0004"]["prune_reason"] == PRUNE_REASON
    assert rows["aaaa0005"]["error"] == ERROR

    html = write_report(exp).read_text()
    assert "Best trial aaaa0002" in html  # the most accurate, without summary.json
    assert "No best/confusion.png" in html and "<img" not in html
    assert html.count('class="plotly-graph-div"') == 7
    assert escape(PRUNE_REASON) in html and escape(ERROR) in html


def test_a_trial_still_training_is_running(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    (exp / "trials.json").unlink()
    result = next(exp.glob("run_trial_aaaa0001_*")) / "result.json"
    result.write_text(result.read_text().splitlines()[0] + "\n")  # one epoch of two, so far
    rows = {r["trial_id"]: r for r in load_trials(exp)}
    assert rows["aaaa0001"]["status"] == "running"
    assert "1 running" in write_report(exp).read_text()


def test_job_prints_the_report_and_trial_count(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    done = subprocess.run(
        [sys.executable, "jobs/report.py", str(exp)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"report": str((exp / "report.html").resolve()), "trials": len(TRIALS)}
    assert Path(result["report"]).stat().st_size > 0
