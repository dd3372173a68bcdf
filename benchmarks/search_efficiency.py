"""Does the search method pay? TPE + ASHA vs random + ASHA vs random search alone, on the clock.

    python benchmarks/search_efficiency.py [--budget SECONDS] [--seeds 0 1] [--num-samples 200] \
        [--threshold 0.6] [--methods tpe+asha random+asha random+none] [--work DIR] \
        [--plot PNG] [-- JOB ARGS...]

Runs jobs/tune_t3d.py on its demo set (the embedded CPU-sized search) with three methods,
once per seed, each under the same wall-clock budget (``--time-budget``, by default the
embedded search's own) and with more samples than fit in it, so the budget is what ends
every search: (a) ``--searcher tpe
--early-stopping asha`` (the job's default), (b) ``--searcher random --early-stopping asha``,
(c) ``--searcher random --early-stopping none`` (every trial trains all its epochs).
Arguments after ``--`` go to every job run. The demo set is generated once under WORK
before any search, so no method's clock includes it.

From every trial's result.json, the best validation video top-1 reached so far is a step
function of the seconds since the search started. Prints a markdown table per method
(per seed: seconds until the best first reaches the threshold, the best at the budget; the
median over seeds), the ratio (a)/(c) of the median times, saves a plot of the curves, and
ends with one JSON line.

Sizing the budget: on a 2-core machine a trial's first epoch ends 55-90 s after it starts
(its Train run, workers, data pipeline, one epoch), so 60 s shows no epoch at all. TPE's
first trials (10 at the default samples, the job's ``n_startup_trials``) are the random
sampler's own draws from the same seed, so (a) and (b) differ only once a search gets past
them: at the demo's 360 s two or three trials run, and (a) against (c) measures early
stopping alone (docs/results.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRIC = "val_video_top1"
CHANCE = 1 / 8  # eight classes in the demo set
# name: (--searcher, --early-stopping); the first is the job's default, the last the baseline.
METHODS = {
    "tpe+asha": ("tpe", "asha"),
    "random+asha": ("random", "asha"),
    "random+none": ("random", "none"),
}
COLOURS = {"tpe+asha": "tab:blue", "random+asha": "tab:orange", "random+none": "tab:green"}
LINES = ("-", "--", "-.")

Curve = list[tuple[float, float]]  # (seconds since the search started, value)


def read_trials(experiment: Path) -> list[list[dict]]:
    """The result.json lines of every Tune trial folder of an experiment, one list per trial;
    empty for a trial that started but reported nothing before the budget ran out."""
    return [
        [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        for result in sorted(experiment.glob("*/result.json"))
    ]


def search_start(experiment: Path, trials: list[list[dict]]) -> float:
    """Unix time at which the search started, Ray's start-up excluded.

    Tune's experiment_state-*.json records when its controller started (``stats.start_time``,
    float seconds); time_budget_s counts from the controller's first step just after, so this
    is the budget's own zero. Without that file: the earliest trial's first activity, its
    first result's ``timestamp - time_total_s`` (whole seconds: up to a second late).
    """
    starts = []
    for state in experiment.glob("experiment_state-*.json"):
        start = json.loads(state.read_text()).get("stats", {}).get("start_time")
        if start is not None:
            starts.append(float(start))
    if starts:
        return min(starts)  # a resumed experiment writes one per session: the first began it
    firsts = [t[0] for t in trials if t and "timestamp" in t[0] and "time_total_s" in t[0]]
    if not firsts:
        raise ValueError(f"{experiment}: no trial reported anything to date the search by")
    return min(r["timestamp"] - r["time_total_s"] for r in firsts)


def read_points(experiment: Path) -> Curve:
    """(seconds since the search started, val_video_top1) of every reported epoch, in time
    order; trials pruned before they started and missing or NaN metrics left out."""
    trials = read_trials(experiment)
    if not any(trials):
        return []
    start = search_start(experiment, trials)
    points = []
    for lines in trials:
        for r in lines:
            value = r.get(METRIC)
            if r.get("pruned") or value is None or math.isnan(value):
                continue
            points.append((r["timestamp"] - start, float(value)))
    return sorted(points)


def best_so_far(points: Curve) -> Curve:
    """The steps of the running maximum: (time, new best) wherever the best goes up."""
    steps: Curve = []
    for seconds, value in sorted(points):
        if not steps or value > steps[-1][1]:
            steps.append((seconds, value))
    return steps


def time_to_reach(curve: Curve, threshold: float) -> float | None:
    """Seconds until the best-so-far curve first reaches ``threshold``; None: never."""
    return next((seconds for seconds, best in curve if best >= threshold), None)


def best_at(curve: Curve, seconds: float) -> float | None:
    """The best-so-far value at ``seconds``; None before the first result."""
    reached = [best for t, best in curve if t <= seconds]
    return reached[-1] if reached else None


def median_with_missing(values: list[float | None], missing: float) -> float | None:
    """Median in which a missing value (None) counts as ``missing`` (+inf for a time never
    reached, -inf for a best never had); None when the median itself is missing."""
    median = statistics.median(missing if v is None else v for v in values)
    return None if math.isinf(median) else median


def run_job(*args: str, log: Path) -> dict:
    """jobs/tune_t3d.py with ``args``; its stderr goes to ``log``, its last stdout line back."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as err:
        done = subprocess.run(
            [sys.executable, str(REPO / "jobs" / "tune_t3d.py"), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=job_env(),
        )
    if done.returncode:
        tail = log.read_text()[-4000:]
        raise SystemExit(f"tune_t3d.py {' '.join(args)} failed (log {log}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def job_env() -> dict:
    # This checkout's raylab first: a virtualenv shared between checkouts may hold an
    # editable install of another one, which a script in jobs/ would otherwise import.
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return os.environ | {
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "PYTHONPATH": path,
    }


def embedded_budget() -> float:
    """The embedded search's time budget, from the job's preset."""
    spec = importlib.util.spec_from_file_location("tune_t3d", REPO / "jobs" / "tune_t3d.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return float(job.CPU_DEFAULT["time_budget"])


def prepare_demo_set(work: Path) -> None:
    """Generate and ingest the demo set the job would otherwise make inside the first search."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); "
        "from tune_t3d import demo_shards; demo_shards(Path(sys.argv[2]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "jobs"), str(work)],
        capture_output=True,
        text=True,
        env=job_env(),
    )
    if done.returncode:
        raise SystemExit(f"preparing the demo set in {work} failed:\n{done.stderr[-4000:]}")


def plot(runs: list[dict], budget: float, threshold: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    seeds = sorted({run["seed"] for run in runs})
    for run in runs:
        curve = run["curve"]
        label = f"{run['method']}, seed {run['seed']}"
        # Colour: the method; line style: the seed (methods of one seed draw alike at first).
        style = {"color": COLOURS[run["method"]], "linestyle": LINES[seeds.index(run["seed"]) % 3]}
        if not curve:  # still in the legend, so that a run with nothing to draw is seen
            ax.plot([], [], **style, label=f"{label}: no epoch")
            continue
        # Held flat to the budget (or the last result, if later) so each run's level shows.
        end = max(budget, curve[-1][0])
        times = [t for t, _ in curve] + [end]
        bests = [b for _, b in curve] + [curve[-1][1]]
        ax.step(
            times,
            bests,
            where="post",
            **style,
            marker="o",
            markersize=3,
            markevery=list(range(len(curve))),  # the improvements, not the held end
            label=label,
        )
    ax.axhline(
        threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:g}"
    )
    ax.axhline(CHANCE, color="grey", linestyle=":", linewidth=1, label="chance (1/8)")
    ax.axvline(budget, color="grey", linewidth=0.5)
    ax.set_xlim(left=0)
    ax.set_ylim(0, 1)
    ax.set_xlabel("seconds since the search started")
    ax.set_ylabel(f"best {METRIC} so far")
    ax.set_title(f"Search methods on the demo set, {budget:g} s budget")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def time_ratio(a: float | None, c: float | None, budget: float) -> tuple[float | None, bool]:
    """(a)/(c) of the median seconds to the threshold, and whether it is only an upper bound.

    When (c) never reached the threshold its time is beyond the budget, so (a)/(c) is below
    a / budget: a bound, not a figure. None when (a) never reached it."""
    if a is None:
        return None, False
    if c is None:
        return a / budget, True
    return (a / c if c > 0 else None), False


def ratio_text(ratio: float | None, bound: bool) -> str:
    if ratio is None:
        return "n/a (tpe+asha did not reach it)"
    if bound:
        return f"< {ratio:.2f} (random+none did not reach it within the budget)"
    return f"{ratio:.2f}"


def seconds_text(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.0f}"


def score_text(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    cut = argv.index("--") if "--" in argv else len(argv)
    own, passthrough = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--budget", type=float, help="seconds per search (default: the embedded search's)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--num-samples", type=int, default=200, help="more than fit in the budget")
    p.add_argument("--threshold", type=float, default=0.6, help="val video top-1 to reach")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="a subset, e.g. one method at a longer budget (its times compare with the others'"
        " at the same seed: the draws and each trial's course do not depend on the budget)",
    )
    p.add_argument("--work", default=".search-efficiency", help="the job's --root for every run")
    p.add_argument("--plot", help="PNG of the curves (default WORK/search_efficiency.png)")
    args = p.parse_args(own)
    if args.budget is None:
        args.budget = embedded_budget()
    work = Path(args.work).resolve()
    out_png = Path(args.plot).resolve() if args.plot else work / "search_efficiency.png"

    print(f"preparing the demo set under {work}", file=sys.stderr, flush=True)
    prepare_demo_set(work)
    runs = []
    # Seeds outside, methods inside: a drift in the machine's speed hits every method alike.
    for seed in args.seeds:
        for method in args.methods:
            searcher, early_stopping = METHODS[method]
            name = f"se-{method.replace('+', '-')}-seed{seed}"
            shutil.rmtree(work / "results" / name, ignore_errors=True)  # else Tune would mix
            print(f"{name}: searching for {args.budget:g} s", file=sys.stderr, flush=True)
            result = run_job(
                *("--root", str(work), "--name", name, "--seed", str(seed)),
                *("--searcher", searcher, "--early-stopping", early_stopping),
                *("--time-budget", str(args.budget), "--num-samples", str(args.num_samples)),
                *passthrough,
                log=work / "logs" / f"{name}.log",
            )
            # The job names its folder; with a budget that ends the search before every
            # sample ran, it reports the search as interrupted but still names it.
            experiment = Path(result.get("experiment") or work / "results" / name)
            points = read_points(experiment)
            curve = best_so_far(points)
            trials = read_trials(experiment)
            run = {
                "method": method,
                "seed": seed,
                "experiment": str(experiment),
                "trials": len(trials),
                "pruned": sum(bool(t and t[0].get("pruned")) for t in trials),
                "epochs": len(points),
                "time_to_threshold_s": time_to_reach(curve, args.threshold),
                "best_at_budget": best_at(curve, args.budget),
                "curve": curve,
            }
            runs.append(run)
            shown = {k: v for k, v in run.items() if k != "curve"}
            print(f"{name}: {shown}", file=sys.stderr, flush=True)

    plot(runs, args.budget, args.threshold, out_png)
    summary: dict = {"budget_s": args.budget, "threshold": args.threshold, "chance": CHANCE}
    methods = {}
    for method in args.methods:
        searcher, early_stopping = METHODS[method]
        mine = [r for r in runs if r["method"] == method]
        times = [r["time_to_threshold_s"] for r in mine]
        bests = [r["best_at_budget"] for r in mine]
        methods[method] = {
            "searcher": searcher,
            "early_stopping": early_stopping,
            "seeds": [r["seed"] for r in mine],
            "time_to_threshold_s": times,
            "best_at_budget": bests,
            "trials": [r["trials"] for r in mine],
            "epochs": [r["epochs"] for r in mine],
            "median_time_to_threshold_s": median_with_missing(times, math.inf),
            "median_best_at_budget": median_with_missing(bests, -math.inf),
            "experiments": [r["experiment"] for r in mine],
        }
        print(f"\n### {method} (--searcher {searcher} --early-stopping {early_stopping})\n")
        reach, at = f"seconds to {args.threshold:g}", f"best at {args.budget:g} s"
        print(f"| seed | trials (pruned) | epochs | {reach} | {at} |")
        print("|---|---|---|---|---|")
        for r in mine:
            print(
                f"| {r['seed']} | {r['trials']} ({r['pruned']}) | {r['epochs']} | "
                f"{seconds_text(r['time_to_threshold_s'])} | {score_text(r['best_at_budget'])} |"
            )
        m = methods[method]
        print(
            f"| median | | | {seconds_text(m['median_time_to_threshold_s'])} | "
            f"{score_text(m['median_best_at_budget'])} |"
        )
    ratio, bound = None, False
    if {"tpe+asha", "random+none"} <= set(methods):
        a = methods["tpe+asha"]["median_time_to_threshold_s"]
        c = methods["random+none"]["median_time_to_threshold_s"]
        ratio, bound = time_ratio(a, c, args.budget)
        shown = ratio_text(ratio, bound)
        print(f"\nmedian seconds to {args.threshold:g}, tpe+asha / random+none: {shown}")
    print(f"plot: {out_png}")
    summary |= {
        "methods": methods,
        "ratio_time_to_threshold_tpe_asha_over_random_none": ratio,
        "ratio_is_upper_bound": bound,
        "plot": str(out_png),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
