"""The experiment report: the Pareto front, and report.html from a small real experiment
folder (a real Optuna study in SQLite, Tune-style trial folders, a real PNG), no Ray."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from html import escape, unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from checkout import REPO
from optuna.exceptions import ExperimentalWarning

from raylab.report import (
    NOTE_CHARS,
    SEARCH_PLOTS,
    at_chance,
    load_trials,
    num_classes,
    pareto_front,
    write_report,
)

NAME = "exp_report"
PRUNE_REASON = "t3d121 cannot take a 8x64x64 clip: needs T >= 29"
ERROR = "RuntimeError: out of memory while allocating the batch"
REPRODUCE = "python jobs/train.py --data /shards --model t3d --frames 16 --out runs/t3d-best"
CLASSES = 8  # summary.json's num_classes: chance is 0.125, the best trial (0.6) well above
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


def make_experiment(root: Path, metric_names: list[str] | None = None) -> Path:
    """An experiment folder as jobs/tune_t3d.py leaves it, with max_epochs 2; the study's
    objective is named ``metric_names`` when given."""
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
    if metric_names:
        study.set_metric_names(metric_names)
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
        "num_classes": CLASSES,
    }
    (exp / "summary.json").write_text(json.dumps(summary))
    (exp / "best").mkdir()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.imshow([[3, 1], [0, 4]])
    fig.savefig(exp / "best" / "confusion.png", bbox_inches="tight")
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
    # The best trial's curves and the cost trade-off first; the details further down.
    titles = [
        "Best trial",
        "Accuracy vs cost",
        "Trials",
        "Evaluation of the best trial",
        "Learning curves of every trial",
        "Search",
        "Inspect",
    ]
    positions = [report.index(f"<h2>{t}</h2>") for t in titles]
    assert positions == sorted(positions)
    assert report.index(f"Experiment {NAME}") < positions[0]
    assert "5 trials: 2 done, 1 stopped, 1 pruned, 1 error" in report
    assert "Best trial aaaa0002" in report
    details = ["Confusion matrix", "Per-class accuracy", "Reproduce"]
    details = [report.index(f"<h3>{t}</h3>") for t in details]
    assert positions[3] < details[0] < details[1] < details[2] < positions[4]
    optuna_plots = [report.index(f"<h3>{title}</h3>") for _, title, _ in SEARCH_PLOTS]
    assert positions[5] < min(optuna_plots) and max(optuna_plots) < positions[6]


def test_report_is_self_contained(report):
    # The best trial's curves, Pareto, two learning curves of every trial and Optuna's four
    # plots; plotly.js inlined exactly once.
    assert report.count('class="plotly-graph-div"') == 8
    assert report.count("<script>/**\n* plotly.js") == 1
    assert "<script src=" not in report
    assert report.count("<img alt='confusion matrix' src='data:image/png;base64,iVBORw0KGgo") == 1
    for title in ("Optimisation history", "Parallel coordinates", "Parameter importances"):
        assert f"<h3>{title}</h3>\n<div" in report
    assert "<h3>Intermediate values</h3>\n<div" in report


def test_report_says_optuna_counts_stopped_trials_as_complete(report):
    """Optuna has no state for a trial Tune stopped early: it is COMPLETE there, with its
    last epoch's value. The search section says so, and how many, next to Optuna's tally."""
    search = report[report.index("<h2>Search</h2>") :]
    note = (
        "The trial stopped early counts as complete here, with the val_video_top1 of its last epoch"
    )
    assert note in search
    assert search.index("Optuna study") < search.index(note) < search.index("<h3>")


def test_report_best_trial_curves_come_first(report):
    best = report[report.index("<h2>Best trial</h2>") : report.index("<h2>Accuracy vs cost</h2>")]
    assert "Trial aaaa0002, per epoch." in best
    assert best.count('class="plotly-graph-div"') == 1
    # Both curves are the best trial's: its two epochs' accuracy and loss.
    assert '"y":[0.4,0.6]' in best and '"y":[1.9,1.2]' in best
    assert '"text":"val_video_top1"' in best and '"text":"train_loss"' in best


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
    assert html.count('class="plotly-graph-div"') == 4  # the best trial, Pareto, every trial
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
    assert html.count('class="plotly-graph-div"') == 8
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


def trials_table(html: str) -> str:
    return html[html.index("<h2>Trials</h2>") : html.index("<h2>Evaluation of the best trial")]


def test_trial_table_rows_are_one_line_with_numbered_notes(report):
    table = trials_table(report)
    # The error row sorts before the pruned one, so the error is note 1.
    for n, text in ((1, ERROR), (2, PRUNE_REASON)):
        assert len(text) > NOTE_CHARS  # both are cut in their cells
        short = escape(text[:NOTE_CHARS].rstrip()) + "\u2026"
        cell = f"<td><a href='#note-{n}'>[{n}]</a> <span title='{escape(text)}'>{short}</span></td>"
        assert cell in table
        assert table.count(f"<li id='note-{n}'>{escape(text)}</li>") == 1
    assert "T >= 29" not in report  # escaped wherever it appears
    # The full text is in a title and in the list, never a cell's text.
    for cell in re.findall(r"<td>(.*?)</td>", table):
        assert len(unescape(re.sub(r"<[^>]*>", "", cell))) <= len("[9] ") + NOTE_CHARS + 1
    assert "<th>note</th>" in table and "<ol class='notes'>" in table


class Cells(HTMLParser):
    """The trial table's note spans (title, text) and its column headers, as a browser reads
    them."""

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[list[str]] = []
        self.headers: list[str] = []
        self.at: str | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "span":
            self.spans.append([dict(attrs)["title"], ""])
        self.at = tag if tag in ("span", "th") else self.at
        if tag == "th":
            self.headers.append("")

    def handle_endtag(self, tag):
        self.at = None if tag in ("span", "th") else self.at

    def handle_data(self, data):
        if self.at == "span":
            self.spans[-1][1] += data
        elif self.at == "th":
            self.headers[-1] += data


def test_trial_notes_are_escaped_and_empty_columns_dropped(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    rows = json.loads((exp / "trials.json").read_text())
    tricky = "ValueError: <b>'quoted'</b> & \"double\" in a note\nspread over lines"
    for row in rows:
        row.pop("stride")  # no value in any row
        if row["status"] == "error":
            row["error"] = tricky
    (exp / "trials.json").write_text(json.dumps(rows))
    cells = Cells()
    cells.feed(trials_table(write_report(exp).read_text()))
    flat = " ".join(tricky.split())
    assert [flat, flat[:NOTE_CHARS].rstrip() + "\u2026"] in cells.spans
    assert "stride" not in cells.headers and "lr" in cells.headers


def test_report_shows_chance_and_no_warning_above_it(report):
    assert f"chance 0.125 ({CLASSES} classes)" in report
    assert "class='warn'" not in report and "at chance level" not in report


def test_report_warns_when_the_best_trial_is_at_chance(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    summary = json.loads((exp / "summary.json").read_text())
    summary["metrics"]["val_video_top1"] = 0.15  # under 1.5 x 1/8
    (exp / "summary.json").write_text(json.dumps(summary))
    html = write_report(exp).read_text()
    warning = "The best trial is at chance level (0.125 for 8 classes): the search found no"
    assert html.count(warning) == 1
    assert html.index(warning) < html.index("<h2>Best trial</h2>")  # near the top
    assert "more epochs" in html and "learning-rate range" in html

    # Without num_classes, best/evaluation.json has a key per class: 2, so 0.6 is chance.
    del summary["num_classes"]
    summary["metrics"]["val_video_top1"] = 0.6
    (exp / "summary.json").write_text(json.dumps(summary))
    html = write_report(exp).read_text()
    assert "chance 0.5 (2 classes)" in html
    assert "The best trial is at chance level (0.5 for 2 classes)" in html

    # Without either, chance is unknown and the report says nothing of it.
    (exp / "best" / "evaluation.json").unlink()
    html = write_report(exp).read_text()
    assert "chance" not in html[: html.index("<h2>Best trial</h2>")]
    assert '"text":"chance"' not in html  # no chance line on the plots either


def test_chance_level_and_its_margin():
    assert num_classes({"num_classes": 8}, {"per_class_acc": {"a": 1.0, "b": 0.0}}) == 8
    assert num_classes({}, {"per_class_acc": {"a": 1.0, "b": 0.0, "c": 0.5}}) == 3
    assert num_classes({}, {}) is None
    assert num_classes({"num_classes": 1}, {}) is None  # one class: no chance to beat
    # At chance means not above 1.5 x 1 / classes.
    assert at_chance(0.125, 8) and at_chance(0.1875, 8) and at_chance(0.0, 8)
    assert not at_chance(0.19, 8) and not at_chance(0.6, 8)
    assert at_chance(0.75, 2) and not at_chance(0.76, 2)


def search_section(html: str) -> dict[str, str]:
    """Optuna's plots in the report, by heading."""
    search = html[html.index("<h2>Search</h2>") : html.index("<h2>Inspect</h2>")]
    return {block.split("</h3>")[0]: block for block in search.split("<h3>")[1:]}


@pytest.mark.parametrize("names", [None, ["val_video_top1"], ["clip_top1"]])
def test_optuna_plots_name_the_metric(names, report, tmp_path):
    # The fixture's study has no metric names: Optuna would say "Objective Value".
    if names is None:
        html = report
    else:
        with warnings.catch_warnings():  # set_metric_names is "experimental" in Optuna
            warnings.simplefilter("ignore", ExperimentalWarning)
            html = write_report(make_experiment(tmp_path, names)).read_text()
    metric = (names or ["val_video_top1"])[0]
    plots = search_section(html)
    assert len(plots) == 4
    for title, block in plots.items():
        assert 'class="plotly-graph-div"' in block, title
        assert "Objective" not in block, title
    history, parallel = plots["Optimisation history"], plots["Parallel coordinates"]
    assert f'"yaxis":{{"title":{{"text":"{metric}"}}}}' in history
    assert f'"name":"{metric}"' in history
    assert f'"ticktext":["{metric}",' in parallel  # the objective's axis, first
    assert f'"colorbar":{{"title":{{"text":"{metric}"}}}}' in parallel
    assert f'"name":"{metric}"' in plots["Parameter importances"]
    assert f'"text":"{metric} per epoch"' in plots["Intermediate values"]


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
# Skipped without a browser on a developer's machine; in CI (CI=true) a missing browser
# fails the browser tests instead, so a green CI has looked at the report.
needs_chromium = pytest.mark.skipif(
    BROWSER is None and os.environ.get("CI", "").lower() != "true",
    reason="no chromium or chromium-browser on PATH (make test installs it with apt-get as root)",
)
# Put first in <head>: keeps what the page throws or logs with console.error as JSON on the
# <html> element, where --dump-dom shows it. Chromium's own log tells uncaught errors
# ("Uncaught ...") but not console.error from console.log.
RECORDER = """<script>(function () {
  var seen = [], root = document.documentElement, error = console.error;
  function note(text) {
    seen.push(String(text));
    root.setAttribute("data-js-errors", JSON.stringify(seen));
  }
  window.addEventListener("error", function (e) { note(e.message); });  // "Uncaught ..."
  window.addEventListener("unhandledrejection", function (e) { note("Unhandled " + e.reason); });
  console.error = function () {
    note([].join.call(arguments, " "));
    error.apply(console, arguments);
  };
})();</script>"""


class Plots(HTMLParser):
    """Per plotly figure div (by id), how many drawn <svg class="main-svg"> it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.svgs: dict[str, int] = {}
        self.plot: str | None = None
        self.depth = 0

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self.plot is None and tag == "div" and "plotly-graph-div" in classes:
            self.plot, self.depth = dict(attrs)["id"], 0
            self.svgs[self.plot] = 0
        if self.plot is not None:
            self.depth += tag == "div"  # divs always close in Chromium's serialised DOM
            self.svgs[self.plot] += tag == "svg" and "main-svg" in classes

    def handle_endtag(self, tag):
        if self.plot is not None and tag == "div":
            self.depth -= 1
            self.plot = None if self.depth == 0 else self.plot


def render(page: str, out: Path) -> tuple[dict[str, int], list[str], list[str], Path]:
    """Open ``page`` (HTML text) in headless Chromium at 1280 px wide: the drawn SVGs of each
    plotly figure, the uncaught errors in Chromium's log, the errors the page recorded, and
    a screenshot."""
    assert BROWSER, "no chromium or chromium-browser on PATH: CI checks the report in one"
    path, png = out / "page.html", out / "page.png"
    path.write_text(page.replace("<head>", "<head>" + RECORDER, 1), encoding="utf-8")
    command = [BROWSER, "--headless=new", "--no-sandbox", "--disable-gpu"]
    command += ["--disable-dev-shm-usage", "--no-first-run", f"--user-data-dir={out / 'profile'}"]
    command += ["--enable-logging=stderr", "--v=0", "--hide-scrollbars"]
    # Virtual time runs the page's timers to the end, so plotly has drawn when the DOM is read.
    command += ["--virtual-time-budget=10000", "--window-size=1280,2400"]
    command += [f"--screenshot={png}", "--dump-dom", path.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [x for x in done.stderr.splitlines() if "CONSOLE" in x and "Uncaught" in x]
    recorded = re.search(r'<html[^>]* data-js-errors="([^"]*)"', done.stdout)
    plots = Plots()
    plots.feed(done.stdout)
    return plots.svgs, logged, json.loads(unescape(recorded[1])) if recorded else [], png


@needs_chromium
def test_report_renders_in_chromium(experiment, report, tmp_path):
    from PIL import Image

    svgs, logged, recorded, png = render(report, tmp_path)
    assert len(svgs) == report.count('class="plotly-graph-div"') == 8
    assert [plot for plot, n in svgs.items() if n == 0] == []  # every figure drew
    assert logged == [] and recorded == []
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(png) as image:
        assert image.size == (1280, 2400)
        assert image.convert("L").getextrema()[0] < 100  # not blank: there is dark text


@needs_chromium
def test_chromium_check_catches_a_js_error_and_an_undrawn_figure(report, tmp_path):
    # The last figure's call to plotly goes nowhere, and a script fails after it.
    last = report.rindex("Plotly.newPlot(")
    page = report[:last] + "(function () {})(" + report[last + len("Plotly.newPlot(") :]
    failing = "<script>console.error('deliberate'); null.deliberate();</script></body>"
    svgs, logged, recorded, _ = render(page.replace("</body>", failing), tmp_path)
    undrawn = [plot for plot, n in svgs.items() if n == 0]
    assert undrawn == [re.findall(r'<div id="([^"]+)" class="plotly-graph-div"', report)[-1]]
    assert len(logged) == 1 and "Uncaught TypeError" in logged[0]
    assert recorded[0] == "deliberate" and recorded[1].startswith("Uncaught TypeError")


def test_a_trial_at_chance_is_not_on_the_pareto_front(experiment, tmp_path):
    exp = copy_of(experiment, tmp_path)
    rows = json.loads((exp / "trials.json").read_text())
    for row in rows:
        if row["trial_id"] == "aaaa0003":  # the cheapest trial, and at chance (0.15 < 0.1875)
            row |= {"gmacs": 0.1, "val_video_top1": 0.15}
    (exp / "trials.json").write_text(json.dumps(rows))
    html = write_report(exp).read_text()
    assert "Non-dominated, cheapest first: aaaa0001, aaaa0002." in html
    assert "Trials at chance are left off the front." in html

    for row in rows:
        row["val_video_top1"] = 0.15
    (exp / "trials.json").write_text(json.dumps(rows))
    assert "Every trial is at chance." in write_report(exp).read_text()
