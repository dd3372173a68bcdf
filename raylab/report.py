"""Experiment -> one self-contained HTML report.

:func:`write_report` reads what ``jobs/tune_t3d.py`` leaves in an experiment folder
(``trials.json``, ``summary.json``, ``best/``, ``optuna.db``, Tune's trial folders) and
writes ``report.html`` beside them: the best trial's learning curves and accuracy against
cost first (with a warning when the best is no better than chance), then every trial in a
table, the best trial's evaluation, Optuna's views of the search and the commands to look
further. The file opens offline: plotly.js is inlined once and the image is a data URI.

An experiment still running or cut off (no ``summary.json``, perhaps no ``trials.json``) is
reported from Tune's trial folders.
"""

from __future__ import annotations

import base64
import contextlib
import html
import inspect
import json
import logging
import math
import warnings
from pathlib import Path

from raylab.metrics import METRIC, TRIAL_STATUSES, epoch_of, folder_trial_id, trial_row

ARCH = ("family", "depth", "stm_stages", "stm_blocks")
KNOBS = (*ARCH, "frames", "size", "stride", "lr", "weight_decay")
COSTS = ("gmacs", "params_m", "clips_per_s", "batch_size")
RESULTS = (METRIC, "val_video_top5", *COSTS, "epochs", "best_epoch")
STATUSES = TRIAL_STATUSES
RAY_DASHBOARD = "http://127.0.0.1:8265/#/jobs"
# The best trial counts as at chance unless its accuracy is above this many times chance:
# a network that learns nothing lands near 1 / classes, give or take the validation noise.
CHANCE_MARGIN = 1.5
NOTE_CHARS = 40  # a trial's note (pruning reason, error) is cut to this in the table
# Optuna's plots, and why one would be empty: what the note says when Optuna gives none.
SEARCH_PLOTS = (
    ("plot_optimization_history", "Optimisation history", "no trial has completed yet"),
    ("plot_parallel_coordinate", "Parallel coordinates", "no trial has completed yet"),
    ("plot_param_importances", "Parameter importances", "no trial has completed yet"),
    ("plot_intermediate_values", "Intermediate values", "no trial has reported an epoch"),
)
# Cells stay on one line so every row is one line high; headers may break after "_".
STYLE = """body{font-family:sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 4px}
td{white-space:nowrap}th{background:#f3f3f3;vertical-align:bottom}td.num{text-align:right}
.wide{overflow-x:auto}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap}
.note{color:#666;font-style:italic}tr.best{background:#eef8ee}a{color:#2a5db0}
ol.notes{font-size:12px;color:#444;margin-top:4px}ol.notes li{margin:2px 0}
.warn{background:#fff1e6;border:2px solid #d9480f;color:#8a2b06;padding:8px 12px;
font-weight:bold}"""


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices (ascending) of the non-dominated ``(cost, accuracy)`` points, where lower cost
    and higher accuracy are better. A point is dominated when another is at least as good on
    both and strictly better on one; equal points are all kept."""
    return [
        i
        for i, (cost, acc) in enumerate(points)
        if not any(c <= cost and a >= acc and (c < cost or a > acc) for c, a in points)
    ]


def read_results(trial_dir: Path) -> list[dict]:
    """The lines of a Tune trial's ``result.json``, one per reported epoch; [] if none."""
    path = Path(trial_dir) / "result.json"
    lines = []
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(json.JSONDecodeError):  # a live trial's half-written line
            lines.append(json.loads(line))
    return lines


def load_trials(experiment_dir: str | Path) -> list[dict]:
    """One row per trial, with ``runner.trial_table``'s keys: ``trials.json`` when the tune
    job wrote it, else rebuilt from Tune's trial folders (``*/params.json``, ``result.json``)."""
    exp = Path(experiment_dir)
    rows = _read_json(exp / "trials.json")
    return rows if isinstance(rows, list) else rows_from_folders(exp)


def rows_from_folders(exp: Path) -> list[dict]:
    """Rows of an unsummarised experiment (``raylab.metrics.trial_row``, as the search's
    ``trials.json``). A trial whose last result is not ``done`` is ``running`` (or was cut
    off); one that ended short of ``options.json``'s max_epochs was ``stopped``; an
    ``error.txt`` beside it marks an ``error``."""
    max_epochs = (_read_json(exp / "options.json") or {}).get("max_epochs")
    rows = []
    for params in sorted(exp.glob("*/params.json")):
        folder = params.parent
        lines = read_results(folder)
        last = lines[-1] if lines else {}
        pruned = any(line.get("pruned") for line in lines)
        error = None
        if not pruned and (folder / "error.txt").exists():
            said = [x for x in (folder / "error.txt").read_text().splitlines() if x.strip()]
            error = (said or ["error"])[-1][:300]
        rows.append(
            trial_row(
                last.get("trial_id") or folder_trial_id(folder.name),
                str(folder),
                _read_json(params) or {},
                lines,
                prune_reason=(last.get("prune_reason") or "pruned") if pruned else None,
                error=error,
                ended=bool(last.get("done")),
                max_epochs=max_epochs,
            )
        )
    return rows


def num_classes(summary: dict, evaluation: dict) -> int | None:
    """How many classes the data has: ``summary.json``'s ``num_classes``, else one per key of
    ``best/evaluation.json``'s ``per_class_acc``, else None (unknown)."""
    count = _num(summary.get("num_classes"))
    if count is None:
        count = len(evaluation.get("per_class_acc") or {})
    return int(count) if count >= 2 else None  # one class has no chance level to speak of


def at_chance(top1: float, classes: int) -> bool:
    """Whether an accuracy is no better than guessing among ``classes``: not above
    CHANCE_MARGIN x chance."""
    return top1 <= CHANCE_MARGIN / classes


def write_report(experiment_dir: str | Path) -> Path:
    """Write ``EXPERIMENT_DIR/report.html`` from whatever the experiment holds so far and
    return its path. Missing pieces (no best trial yet, a plot Optuna cannot draw) become a
    sentence in the report rather than an error."""
    exp = Path(experiment_dir).resolve()
    rows = load_trials(exp)
    summary = _read_json(exp / "summary.json") or {}
    evaluation = _read_json(exp / "best" / "evaluation.json") or {}
    best = _best_row(rows, summary)
    classes = num_classes(summary, evaluation)
    figure = _Figures()
    # What one looks at first goes first: is the best any good, and at what cost.
    sections = [
        _header(exp, rows, best, summary, classes),
        _best_curves_section(exp, best, classes, figure),
        _pareto_section(rows, classes, figure),
        _trials_section(rows, best),
        _evaluation_section(exp, best, summary, evaluation),
        _curves_section(exp, rows, figure),
        _search_section(exp, figure, stopped=sum(r.get("status") == "stopped" for r in rows)),
        _inspect_section(exp),
    ]
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(exp.name)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = exp / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


class _Figures:
    """Plotly figures as HTML divs: plotly.js goes inline with the first one only, so the
    sections must be built in page order."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, fig, height: int = 460) -> str:
        # A section heading names each figure, so a figure without its own title needs
        # little room above it.
        top = 60 if fig.layout.title.text or fig.layout.annotations else 30
        fig.update_layout(template="plotly_white", height=height, margin={"t": top, "b": 60})
        div = fig.to_html(
            full_html=False, include_plotlyjs=self.count == 0, config={"displaylogo": False}
        )
        self.count += 1
        return div


class _Html(str):
    """A table cell already written in HTML, not to be escaped again."""


def _header(
    exp: Path, rows: list[dict], best: dict | None, summary: dict, classes: int | None
) -> str:
    statuses = [str(r.get("status")) for r in rows]
    extra = sorted(set(statuses) - set(STATUSES))  # a live experiment has running trials
    tally = ", ".join(f"{statuses.count(s)} {s}" for s in (*STATUSES, *extra))
    out = f"<h1>Experiment {_e(exp.name)}</h1>\n<p>{len(rows)} trials: {_e(tally)}.</p>"
    if best is None:
        return out + "<p class='note'>No trial has finished an epoch yet.</p>"
    config = summary.get("best_config") or {k: best[k] for k in KNOBS if k in best}
    knobs = ", ".join(f"{k}={_fmt(k, v)}" for k, v in config.items())
    metrics = _best_metrics(best, summary)
    shown = ", ".join(f"{k} {_fmt(k, metrics.get(k))}" for k in (METRIC, "val_video_top5", "gmacs"))
    if classes:
        shown += f"; chance {_chance(classes)} ({classes} classes)"
    out += f"\n<p><b>Best trial {_e(best['trial_id'])}</b>: {_e(knobs)}<br>{_e(shown)}</p>"
    top1 = _num(metrics.get(METRIC))
    if classes and top1 is not None and at_chance(top1, classes):
        out += (
            f"\n<p class='warn'>The best trial is at chance level ({_chance(classes)} for "
            f"{classes} classes): the search found no network that learns; its {METRIC} "
            f"{_fmt(METRIC, top1)} is not above {CHANCE_MARGIN:g} x chance. Train for more "
            "epochs, or widen the learning-rate range.</p>"
        )
    return out


def _best_curves_section(
    exp: Path, best: dict | None, classes: int | None, figure: _Figures
) -> str:
    from plotly.subplots import make_subplots

    out = "<h2>Best trial</h2>\n"
    if best is None:
        return out + "<p class='note'>None yet.</p>"
    lines = read_results(_trial_dir(exp, best))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(METRIC, "train_loss"))
    for col, key in enumerate((METRIC, "train_loss"), start=1):
        x, y = _curve(lines, key)
        if x:
            fig.add_scatter(x=x, y=y, name=key, mode="lines+markers", row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
    if not fig.data:
        return out + f"<p class='note'>Trial {_e(best['trial_id'])} reported no epochs.</p>"
    if classes:
        fig.add_hline(
            y=1 / classes, line_dash="dot", line_color="#d9480f", row=1, col=1,
            annotation_text="chance", annotation_position="top right",
        )  # fmt: skip
    fig.update_layout(showlegend=False)
    _epoch_ticks(fig, lines)
    note = f"<p>Trial {_e(best['trial_id'])}, per epoch.</p>\n"
    return out + note + figure(fig, height=360)


def _trials_section(rows: list[dict], best: dict | None) -> str:
    def order(row: dict) -> tuple:
        acc = _num(row.get(METRIC))
        return (row.get("status") == "pruned", acc is None, -(acc or 0.0))

    columns = ["trial_id", "status", *KNOBS, *RESULTS]
    columns = [k for k in columns if any(_fmt(k, r.get(k)) for r in rows)]

    # A pruning reason or error is long: the cell shows its start, the full text is on
    # hover and numbered below the table. The same text keeps the same number.
    def note(row: dict) -> str:
        return " ".join(str(row.get("prune_reason") or row.get("error") or "").split())

    noted = any(note(r) for r in rows)
    notes: dict[str, int] = {}
    body = []
    for row in sorted(rows, key=order):
        cells: list = [_fmt(k, row.get(k)) for k in columns]
        text = note(row)
        if text:
            n = notes.setdefault(text, len(notes) + 1)
            short = text if len(text) <= NOTE_CHARS else text[:NOTE_CHARS].rstrip() + "\u2026"
            link = f"<a href='#note-{n}'>[{n}]</a>"
            cells.append(_Html(f"{link} <span title='{_e(text)}'>{_e(short)}</span>"))
        elif noted:
            cells.append("")
        body.append((cells, row is best))
    header = [*columns, "note"] if noted else columns
    out = "<h2>Trials</h2>\n<div class='wide'>" + _table(header, body) + "</div>"
    if notes:
        items = "".join(f"<li id='note-{n}'>{_e(t)}</li>" for t, n in notes.items())
        out += f"\n<ol class='notes'>{items}</ol>"
    return out


def _evaluation_section(exp: Path, best: dict | None, summary: dict, evaluation: dict) -> str:
    out = ["<h2>Evaluation of the best trial</h2>"]
    if best is None:
        return out[0] + "<p class='note'>None yet.</p>"
    metrics = _best_metrics(best, summary)
    out.append(_table(["metric", "value"], [[k, _fmt(k, v)] for k, v in metrics.items()]))
    png = exp / "best" / "confusion.png"
    if png.exists():
        data = base64.b64encode(png.read_bytes()).decode()
        out.append(
            f"<h3>Confusion matrix</h3><img alt='confusion matrix' src='data:image/png;base64,{data}'>"
        )
    else:
        out.append("<p class='note'>No best/confusion.png: the tune job writes it at the end.</p>")
    if evaluation.get("per_class_acc"):
        per_class = [[c, _fmt("acc", a)] for c, a in evaluation["per_class_acc"].items()]
        out += ["<h3>Per-class accuracy</h3>", _table(["class", "accuracy"], per_class)]
    command = summary.get("reproduce")
    if not command and (exp / "best" / "command.txt").exists():
        command = (exp / "best" / "command.txt").read_text().strip()
    out.append("<h3>Reproduce</h3>")
    out.append(f"<pre>{_e(command)}</pre>" if command else "<p class='note'>Not written yet.</p>")
    return "\n".join(out)


def _pareto_section(rows: list[dict], classes: int | None, figure: _Figures) -> str:
    import plotly.graph_objects as go

    points = [(r, _num(r.get("gmacs")), _num(r.get(METRIC))) for r in rows]
    points = [(r, c, a) for r, c, a in points if c is not None and a is not None]
    out = "<h2>Accuracy vs cost</h2>\n"
    if not points:
        return out + "<p class='note'>No trial has both an accuracy and a cost yet.</p>"
    # A network at chance is no trade-off, however cheap: the front runs through the others.
    learners = [i for i, (_, _, a) in enumerate(points) if not (classes and at_chance(a, classes))]
    front = [learners[j] for j in pareto_front([points[i][1:] for i in learners])]
    front.sort(key=lambda i: points[i][1:])

    def trace(idx: list[int], **style):
        hover = [_describe(points[i][0]) for i in idx]
        x, y = [points[i][1] for i in idx], [points[i][2] for i in idx]
        return go.Scatter(x=x, y=y, text=hover, hovertemplate="%{text}<extra></extra>", **style)

    fig = go.Figure()
    fig.add_trace(trace(list(range(len(points))), mode="markers", name="trials"))
    fig.add_trace(trace(front, mode="lines+markers", line_shape="hv", name="Pareto front"))
    fig.update_traces(marker_size=10)
    fig.update_layout(xaxis_title="GMACs per clip", yaxis_title=METRIC)
    if classes:
        fig.add_hline(
            y=1 / classes, line_dash="dot", line_color="#d9480f",
            annotation_text="chance", annotation_position="top right",
        )  # fmt: skip
    ids = ", ".join(str(points[i][0]["trial_id"]) for i in front)
    note = f"Non-dominated, cheapest first: {_e(ids)}." if front else "Every trial is at chance."
    if front and len(learners) < len(points):
        note += " Trials at chance are left off the front."
    return out + figure(fig, height=400) + f"<p>{note}</p>"


def _curves_section(exp: Path, rows: list[dict], figure: _Figures) -> str:
    import plotly.graph_objects as go

    curves = {r["trial_id"]: (r, read_results(_trial_dir(exp, r))) for r in rows}
    every = [line for _, lines in curves.values() for line in lines]
    out = ["<h2>Learning curves of every trial</h2>"]
    for key in (METRIC, "train_loss"):
        fig = go.Figure()
        for trial_id, (row, lines) in curves.items():
            x, y = _curve(lines, key)
            if x:
                name = f"{trial_id} {row.get('family', '')}".strip()
                fig.add_scatter(x=x, y=y, name=name)
        fig.update_layout(title=key, xaxis_title="epoch", yaxis_title=key)
        _epoch_ticks(fig, every)
        out.append(figure(fig) if fig.data else f"<p class='note'>No trial has reported {key}.</p>")
    return "\n".join(out)


def _search_section(exp: Path, figure: _Figures, stopped: int = 0) -> str:
    """Optuna's view of the search. ``stopped``: trials Tune ended early, which Optuna has
    no state for (see the note it gets)."""
    import optuna

    out = ["<h2>Search</h2>"]
    db = exp / "optuna.db"
    if not db.exists():
        return out[0] + f"<p class='note'>No study: {_e(db)} does not exist.</p>"
    storage = f"sqlite:///{db}"
    try:
        names = optuna.get_all_study_names(storage)
        # The folder may have been renamed when copied off the cluster: a lone study is its.
        name = exp.name if exp.name in names or len(names) != 1 else names[0]
        study = optuna.load_study(study_name=name, storage=storage)
    except Exception as exc:
        return out[0] + f"<p class='note'>Could not open the study in {_e(db)}: {_e(exc)}</p>"
    states = [t.state.name.lower() for t in study.trials]
    tally = ", ".join(f"{states.count(s)} {s}" for s in sorted(set(states)))
    out.append(f"<p>Optuna study <code>{_e(name)}</code>: {_e(tally or 'no trials')}.</p>")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    metric = (study.metric_names or [METRIC])[0]
    if stopped and complete:
        # Ray's OptunaSearch tells Optuna a trial Tune ended as complete, with the value of
        # its last result: a stopped trial's plotted value is its last epoch's, not its best.
        which = "The trial" if stopped == 1 else f"The {stopped} trials"
        verb, each = ("counts", "") if stopped == 1 else ("count", "each ")
        out.append(
            f"<p class='note'>{which} stopped early {verb} as complete here, {each}with the "
            f"{_e(metric)} of its last epoch; the trials table above gives each trial's best "
            "and how it ended.</p>"
        )
    varied = any(t.params != complete[0].params for t in complete)
    # Optuna labels a single objective "Objective Value" unless told its name; most of its
    # plots ignore the study's metric_names then, so pass the name (metric) to those that do.
    for func, title, reason in SEARCH_PLOTS:
        out.append(f"<h3>{title}</h3>")
        # Optuna would draw equal, meaningless bars: say so instead.
        if func == "plot_param_importances" and (len(complete) < 2 or not varied):
            out.append(
                "<p class='note'>Not drawn: importances need at least 2 completed trials "
                f"whose parameters vary ({len(complete)} completed).</p>"
            )
            continue
        plot = getattr(optuna.visualization, func)
        named = "target_name" in inspect.signature(plot).parameters
        with _optuna_notes() as notes:
            try:
                fig = plot(study, target_name=metric) if named else plot(study)
            except Exception as exc:
                fig, reason = None, f"{type(exc).__name__}: {exc}"
        if fig is None or not fig.data:
            out.append(f"<p class='note'>Not drawn: {_e(notes[0] if notes else reason)}</p>")
            continue
        if func == "plot_intermediate_values":  # its axes say "Intermediate Value", "Step"
            fig.update_layout(yaxis_title=f"{metric} per epoch", xaxis_title="epoch")
            steps = [{"training_iteration": i} for t in study.trials for i in t.intermediate_values]
            _epoch_ticks(fig, steps)
        if func == "plot_optimization_history":  # trials are numbered from 0
            _whole_ticks(fig, first=0, last=len(study.trials) - 1)
        fig.update_layout(title_text="")  # the heading above says what it is
        out.append(figure(fig))
        out += [f"<p class='note'>Optuna: {_e(n)}</p>" for n in dict.fromkeys(notes)]
    return "\n".join(out)


def _inspect_section(exp: Path) -> str:
    commands = [
        f"optuna-dashboard sqlite:///{exp / 'optuna.db'}",
        f"tensorboard --logdir {exp}",
        f"# Ray dashboard, Jobs page: {RAY_DASHBOARD}",
    ]
    return "<h2>Inspect</h2>\n<pre>" + _e("\n".join(commands)) + "</pre>"


@contextlib.contextmanager
def _optuna_notes():
    """Collect what Optuna warns (through logging or warnings) while a plot is drawn."""
    notes: list[str] = []
    handler, logger = logging.Handler(logging.WARNING), logging.getLogger("optuna")
    handler.emit = lambda record: notes.append(record.getMessage())
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield notes
        notes.extend(str(w.message) for w in caught)
    finally:
        logger.removeHandler(handler)


def _best_row(rows: list[dict], summary: dict) -> dict | None:
    """The summary's best trial, else the most accurate (the cheaper on ties)."""
    for row in rows:
        if summary.get("best_trial") and row.get("trial_id") == summary["best_trial"]:
            return row
    scored = [r for r in rows if _num(r.get(METRIC)) is not None]
    return max(scored, key=lambda r: (r[METRIC], -(_num(r.get("gmacs")) or 0)), default=None)


def _best_metrics(best: dict, summary: dict) -> dict:
    return summary.get("metrics") or {k: best.get(k) for k in RESULTS}


def _chance(classes: int) -> str:
    return f"{1 / classes:.3g}"


def _curve(lines: list[dict], key: str) -> tuple[list, list]:
    """Epochs and values of ``key`` in a trial's results, where both are numbers."""
    xy = [(_num(epoch_of(x)), _num(x.get(key))) for x in lines if not x.get("restored")]
    xy = [(i, v) for i, v in xy if i is not None and v is not None]
    return [i for i, _ in xy], [v for _, v in xy]


def _epoch_ticks(fig, lines: list[dict]) -> None:
    """Whole epochs on the x axes: plotly's own ticks fall between epochs (1.2, 1.4, ...)."""
    last = max((epoch_of(x) for x in lines), default=0)
    _whole_ticks(fig, first=1, last=last)


def _whole_ticks(fig, first: int, last: float) -> None:
    """About ten ticks on the x axes, on whole numbers from ``first``."""
    fig.update_xaxes(tick0=first, dtick=max(1, math.ceil((last - first) / 10)))


def _trial_dir(exp: Path, row: dict) -> Path:
    """A trial's Tune folder: trials.json holds where it ran, so a moved experiment finds
    it by name in its own folder."""
    path = Path(row.get("path") or "")
    return exp / path.name if path.name and (exp / path.name).is_dir() else path


def _describe(row: dict) -> str:
    knobs = " ".join(f"{k}={_fmt(k, row[k])}" for k in KNOBS if row.get(k) is not None)
    return f"{row['trial_id']}<br>{knobs}<br>top1 {_fmt(METRIC, row.get(METRIC))}"


def _table(header: list[str], rows: list) -> str:
    """An HTML table of text (or :class:`_Html`) cells; a row may be ``(cells, highlighted)``."""
    # A long header may break after an underscore, so narrow number columns stay narrow.
    ths = "".join(f"<th>{_e(h).replace('_', '_<wbr>')}</th>" for h in header)
    lines = [f"<table><tr>{ths}</tr>"]
    for row in rows:
        cells, mark = row if isinstance(row, tuple) else (row, False)
        tds = "".join(_td(c) for c in cells)
        lines.append(f"<tr class='best'>{tds}</tr>" if mark else f"<tr>{tds}</tr>")
    return "\n".join(lines) + "</table>"


def _td(cell: str) -> str:
    if isinstance(cell, _Html):
        return f"<td>{cell}</td>"
    return f"<td class='num'>{_e(cell)}</td>" if _num(cell) is not None else f"<td>{_e(cell)}</td>"


def _fmt(key: str, value) -> str:
    """A cell: blank when missing, accuracies to 3 decimals, rates in e-notation, other
    floats to 3 significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, float):
        return str(value)
    if key in ("lr", "weight_decay"):
        return f"{value:.2e}"
    if key.endswith(("top1", "top5", "acc")):
        return f"{value:.3f}"
    # "#" keeps trailing zeros, so a column's numbers line up (0.600 beside 0.324).
    return f"{value:#.3g}".rstrip(".") if abs(value) < 999.5 else f"{value:,.0f}"


def _num(value) -> float | None:
    """A finite number as float, else None (missing, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _e(value) -> str:
    return html.escape(str(value))
