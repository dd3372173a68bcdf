"""jobs/tune_t3d.py as users run it: `ray job submit` to a real head with token auth, the
Optuna dashboard and the Ray dashboard read while it runs, and interrupt + resume."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.fs
import pytest
import torch
from checkout import REPO

from benchmarks import trial_start
from jobs import tune_t3d as tune_job
from raylab.data.storage import storage
from raylab.metrics import SIZING_KEY, TIMED

BIN = Path(sys.executable).parent
SEARCHED = {"family", "frames", "size", "stride", "lr", "weight_decay"}
# Tiny trials: 1/16-width STM on 4-8 frame 48 px clips of the 24-frame demo shards (T3D's
# pooling needs 29+ frames: on these videos every T3D draw would be pruned).
TINY = [
    "--family", "stm",
    "--frames", "4", "8",
    "--size", "48",
    "--stride", "1", "2",
    "--width", "0.0625",
    "--batch-size", "8",
]  # fmt: skip


def free_port() -> int:
    """A port free now; another process may take it before the caller binds it, so servers
    started on such ports are started through :func:`start_on_free_ports`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Exited(Exception):
    """A server process ended while it was awaited."""


def start_on_free_ports(start, ready, what: str, timeout: float, attempts: int = 3):
    """``start()`` a server on freshly picked ports (it picks them) until ``ready(proc)``
    answers: a server that exits or never answers, as when one of its ports was taken
    between the pick and its bind, is stopped and started again on new ports."""
    for attempt in range(1, attempts + 1):
        proc = start()

        def probe(proc=proc):
            if proc.poll() is not None:
                raise Exited(f"{what} exited with {proc.returncode}")
            return ready(proc)

        try:
            return proc, wait_for(what, probe, timeout)
        except (Exited, AssertionError):
            stop_group(proc)
            if attempt == attempts:
                raise


def stop_group(proc: subprocess.Popen, wait: float = 60) -> None:
    """SIGTERM a process started with ``start_new_session=True`` and its children, then
    SIGKILL them if they outlive ``wait``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(wait)


def stop_head(head: subprocess.Popen) -> None:
    """Kill a test's `ray start --head --block` and every process of its cluster at once.
    SIGTERM makes `ray start` stop its processes one by one, about 35 s on 2 cores, for a
    cluster whose state nobody keeps; its processes are found by its GCS port, which each
    one's command line names, so the session's own Ray is left alone."""
    marker = f"[:=]{head.ports['gcs']}( |$)"  # --gcs-address=IP:PORT, --gcs_server_port=PORT
    os.killpg(head.pid, signal.SIGKILL)
    head.wait(30)

    def left() -> list[int]:
        found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
        return [int(pid) for pid in found.split() if int(pid) != os.getpid()]

    deadline = time.monotonic() + 30
    while (pids := left()) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    assert not left(), f"processes of the test's Ray head outlived it: {left()}"


def get_json(url: str, token: str | None = None, timeout: float = 10) -> dict | list:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(what: str, check, timeout: float, every: float = 1.0):
    """Poll ``check()`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except urllib.error.HTTPError as err:
            value, last = None, f"{err}: {err.read()[:500]!r}"
        except (OSError, sqlite3.Error, ValueError) as err:
            value, last = None, repr(err)
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last}")


def study_trials(db: Path) -> list[tuple[int, str]]:
    """(number, state) of the trials in a study file, read as the dashboard would."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def last_json(text: str) -> dict:
    """The job's result: the last stdout line that is a JSON object."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON line in the output:\n{text[-3000:]}")


@pytest.fixture(scope="module")
def ray_head(s3_store):
    """A real `ray start --head --block` with token auth on free ports, stopped at the end
    (by its own process group, so the session's other Ray is left alone). It inherits the
    S3 endpoint's settings from the environment, as a cluster's nodes would."""
    token = secrets.token_hex(32)
    # Without RAY_ADDRESS: the session's ray.init() set it, and jobs would join that Ray.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # `python` in a job is this venv's
    }

    def start() -> subprocess.Popen:
        dashboard, gcs = free_port(), free_port()
        head = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--head", "--block",
                f"--port={gcs}",
                "--num-cpus=2",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                "--include-dashboard=true",
                # Its own agent ports: the defaults are taken by the session's local Ray.
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        head.ports = {"dashboard": dashboard, "gcs": gcs}
        return head

    head, _ = start_on_free_ports(
        start,
        lambda head: get_json(f"http://127.0.0.1:{head.ports['dashboard']}/api/version", token),
        "the Ray dashboard",
        90,
    )
    url = f"http://127.0.0.1:{head.ports['dashboard']}"
    yield {
        "url": url,
        "token": token,
        "env": env | {"RAY_API_SERVER_ADDRESS": url},
        "address": f"127.0.0.1:{head.ports['gcs']}",
    }
    stop_head(head)
    # `ray start` wrote its address where a later bare ray.init() looks for a cluster to
    # join; `ray stop` would delete it, but this head is stopped by its process group. Left
    # behind, the machine's next ray.init() (a job run without a head) waits on a dead one.
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.exists() and current.read_text().strip().endswith(f":{head.ports['gcs']}"):
        current.unlink()


# One search, run uninterrupted and interrupted: random draws with seed 13 (sizes 128, 48,
# 48: a crop of 128 cannot be cut from shards stored at short side 64, so that draw is
# pruned; each pruned draw is a trial started and ended, so the seed draws only one), trials
# of 2 epochs one at a time, ended by a budget of 3 trial-epochs.
SEED = "13"
SEEDED = [
    "--num-samples", "8", "--max-epochs", "2", "--concurrency", "1", "--budget-epochs", "3",
    "--size", "48", "128", *[a for a in TINY if a not in ("--size", "48")],
    "--searcher", "random",
]  # fmt: skip
# What two runs of one search may differ in: ids, places and speeds.
UNTIMED = {"trial_id", "path", "best_checkpoint"} | TIMED


def untimed(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in UNTIMED} for row in rows]


def stored_text(location: str | Path) -> str:
    """A file of a local folder or of s3://."""
    fs, path = storage(location)
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def stored_json(location: str | Path) -> dict | list:
    return json.loads(stored_text(location))


def table(experiment: Path) -> list[dict]:
    """A search's trial table without what two runs of it may differ in."""
    return untimed(json.loads((experiment / "trials.json").read_text()))


def history(experiment: Path) -> dict[str, list[dict]]:
    """Every Train run's history lines (epochs and resumes), by Tune trial id."""
    return {
        h.parent.name.removeprefix("train-"): [json.loads(x) for x in h.read_text().splitlines()]
        for h in experiment.glob("train_runs/train-*/history.jsonl")
    }


def trial_numbers(experiment: Path) -> dict[str, int]:
    """Each trial's place in the order the search created them, by Tune trial id: Tune names
    a trial's folder run_trial_<id>_<n>_... when it creates the trial."""
    return {
        m.group(1): int(m.group(2))
        for d in experiment.glob("run_trial_*")
        if (m := re.match(r"run_trial_([0-9a-f]{8})_(\d+)_", d.name))
    }


def epoch_figures(experiment: Path) -> list[list[dict]]:
    """Each trained trial's epochs as its Train run recorded them, in the order the trials
    ran, without the clock: the epochs the search counted (a trial the budget stops may
    train on until it is stopped, as timing has it), the last line of an epoch trained
    again after a resume."""
    rows = {r["trial_id"]: r for r in json.loads((experiment / "trials.json").read_text())}
    number = trial_numbers(experiment)
    figures = []
    for trial, lines in sorted(history(experiment).items(), key=lambda kv: number[kv[0]]):
        epochs = {
            r["epoch"]: {k: v for k, v in r.items() if k not in TIMED}
            for r in lines
            if r["event"] == "epoch" and r["epoch"] <= rows[trial]["epochs"]
        }
        figures.append([epochs[e] for e in sorted(epochs)])
    return figures


@pytest.fixture(scope="module")
def submitted(s3_shards, s3_store, ray_head, tmp_path_factory) -> dict:
    """The seeded search, submitted with `ray job submit` to the head with token auth, its
    data and results on s3:// (a real S3 endpoint, configured by the environment alone), the
    study local under --root; what the dashboards showed while it ran, and what it ended
    with."""
    url, token, env = ray_head["url"], ray_head["token"], ray_head["env"]
    seen: dict = {}
    try:
        get_json(f"{url}/api/jobs/")  # auth is on: no token, no access
    except urllib.error.HTTPError as err:
        seen["without_token"] = err.code
    job_id = f"tune-{secrets.token_hex(4)}"
    name = "submitted"
    root = tmp_path_factory.mktemp("submitted")
    command = [
        str(BIN / "ray"), "job", "submit", "--no-wait",
        "--submission-id", job_id,
        "--working-dir", str(REPO),
        "--", "python", "jobs/tune_t3d.py",
        "--data", s3_shards, "--storage-path", f"{s3_store}/results",
        "--root", str(root), "--name", name, *SEEDED, "--seed", SEED,
    ]  # fmt: skip

    def submit():
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        # The head answers before its job agent is up; until then it refuses submissions.
        return done if "No available agent" not in done.stderr else None

    submitted = wait_for("the job agent to accept the job", submit, 120, every=3)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    db = root / "studies" / name / "optuna.db"

    # Optuna's dashboard on the live study: trials appear while the job runs.
    wait_for("the study's first trial", lambda: study_trials(db), 240)

    def start_dashboard() -> subprocess.Popen:
        port = free_port()
        dash = subprocess.Popen(
            [str(BIN / "optuna-dashboard"), f"sqlite:///{db}", "--port", str(port), "--quiet"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        dash.port = port
        return dash

    dash, answer = start_on_free_ports(
        start_dashboard,
        lambda dash: get_json(f"http://127.0.0.1:{dash.port}/api/studies"),
        "optuna-dashboard",
        60,
    )
    try:
        seen["studies"] = answer["study_summaries"]
        study_id = seen["studies"][0]["study_id"]
        seen["study"] = get_json(f"http://127.0.0.1:{dash.port}/api/studies/{study_id}")
    finally:
        stop_group(dash, 30)

    # The Ray dashboard: the job, its logs, and each trial's Train run (state tracking on).
    seen["jobs"] = get_json(f"{url}/api/jobs/", token)
    try:
        seen["train_runs"] = wait_for(
            "a Train run in /api/train/v2/runs/v1",
            lambda: get_json(f"{url}/api/train/v2/runs/v1", token).get("train_runs"),
            240,
        )
    except AssertionError as err:
        logs = get_json(f"{url}/api/jobs/{job_id}/logs", token)["logs"]
        raise AssertionError(f"{err}\njob logs:\n{logs[-3000:]}") from None
    seen["status"] = wait_for(
        "the job to finish",
        lambda: (
            s if (s := get_json(f"{url}/api/jobs/{job_id}", token)["status"])
            in ("SUCCEEDED", "FAILED", "STOPPED") else None
        ),
        600,
        every=2,
    )  # fmt: skip
    seen["logs"] = get_json(f"{url}/api/jobs/{job_id}/logs", token)["logs"]
    experiment = f"{s3_store}/results/{name}"
    # A local copy of what the bucket holds, for the tests that read trial folders.
    fs, path = storage(experiment)
    copy = root / "copy"
    pyarrow.fs.copy_files(path, str(copy), source_filesystem=fs)
    return seen | {"job_id": job_id, "name": name, "experiment": experiment, "db": db, "copy": copy}


def test_ray_job_submit_runs_the_search_and_dashboards_show_it(submitted):
    """A search submitted with `ray job submit` to a head with token auth: a request without
    the token is refused (401); with it the job runs, the dashboards show it, it succeeds.
    Its trial folders, checkpoints, best weights and report land in the bucket."""
    assert submitted["without_token"] == 401
    studies = submitted["studies"]
    assert [s["study_name"] for s in studies] == [submitted["name"]]
    trials = submitted["study"]["trials"]
    assert trials and all("frames" in {p["name"] for p in t["params"]} for t in trials)
    assert submitted["job_id"] in [j["submission_id"] for j in submitted["jobs"]]
    assert any(r["name"].startswith("train-") for r in submitted["train_runs"])
    logs = submitted["logs"]
    assert submitted["status"] == "SUCCEEDED", logs[-4000:]
    experiment = submitted["experiment"]
    rows = stored_json(f"{experiment}/trials.json")
    trained = [r for r in rows if r["status"] != "pruned"]
    # The console tells the search's story, one line per trial event; Ray's internals (worker
    # output, Ray Data's plans, Tune's tables) stay in log files.
    lines = logs.splitlines()
    # A trial whose crop the shards cannot give is told as pruned, never as started.
    assert trained and sum(" started: stm " in line for line in lines) == len(trained), logs
    assert sum(" epoch " in line and "val top-1" in line for line in lines) >= 3
    for internal in (
        "RayTrainWorker",
        "Execution plan",
        "Trial status",
        "started with configuration",
        "(raylet)",  # e.g. its warning of more worker processes than the node's CPUs expect
    ):
        assert not [line for line in lines if internal in line], internal
    assert len(lines) < 60, logs
    result = last_json(logs)
    assert set(result["best_config"]) >= SEARCHED
    assert ({"depth"} if result["best_config"]["family"] == "t3d" else {"stm_stages"}) <= set(
        result["best_config"]
    )
    assert result["metrics"]["gmacs"] > 0 and result["metrics"]["params_m"] > 0
    assert result["trials"]["total"] == len(rows)
    assert result["experiment"] == experiment
    assert result["best_checkpoint"].startswith(f"{experiment}/train_runs/train-")
    fs, root = storage(experiment)
    listing = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    stored = {i.path[len(root) + 1 :] for i in listing if i.type == pyarrow.fs.FileType.File}
    assert {"summary.json", "trials.json", "report.html", "best/confusion.png"} <= stored
    assert sum(n.endswith("/result.json") for n in stored) == len(rows)  # Tune's trial folders
    assert f"{result['best_checkpoint'].removeprefix(experiment + '/')}/state.pt" in stored
    # The best figure is the best of the trials' table, and its checkpoint's own record.
    best = max(r["val_video_top1"] for r in trained if r.get("val_video_top1") is not None)
    assert result["metrics"]["val_video_top1"] == best
    with fs.open_input_file(
        f"{root}/{result['best_checkpoint'].removeprefix(experiment + '/')}/state.pt"
    ) as f:
        state = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert state["metrics"]["val_video_top1"] == best
    with fs.open_input_file(f"{root}/best/weights.pt") as f:
        weights = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert all(isinstance(w, torch.Tensor) for w in weights.values())
    with fs.open_input_stream(f"{root}/report.html") as f:
        report = f.read().decode()
    assert report.count('class="plotly-graph-div"') >= 4
    assert "data:image/png;base64" in report  # the best trial's confusion matrix
    assert "jobs/train.py" in report  # how to reproduce the best trial


def test_a_search_ends_after_exactly_its_budget_and_prunes_what_the_data_cannot_feed(
    submitted,
):
    """Draws of a crop the shards cannot give are PRUNED before they start, with the reason
    in the study, trials.json and the report; the others train until the trials have trained
    3 epochs in all, and the trial running then is stopped and closed in the study."""
    experiment, result = submitted["experiment"], last_json(submitted["logs"])
    rows = stored_json(f"{experiment}/trials.json")
    pruned = [r for r in rows if r["status"] == "pruned"]
    trained = [r for r in rows if r["status"] != "pruned"]
    assert pruned and sum(r.get("epochs", 0) for r in trained) == 3, rows
    assert [r["epochs"] for r in trained] == [2, 1] and trained[-1]["status"] == "stopped"
    reason = "resolution 128 is cropped from frames at short side 146, above the stored"
    assert all(r["size"] == 128 and r["prune_reason"].startswith(reason) for r in pruned)
    assert all(r["size"] == 48 for r in trained)
    assert result["trials"]["pruned"] == len(pruned)
    assert f"trial {pruned[0]['trial_id']} pruned before it started" in submitted["logs"]
    with sqlite3.connect(f"file:{submitted['db']}?mode=ro", uri=True) as con:
        states = con.execute(
            "SELECT t.state, a.value_json FROM trials t JOIN trial_user_attributes a "
            "ON a.trial_id = t.trial_id AND a.key = 'prune_reason'"
        ).fetchall()
    assert len(states) == len(pruned) and {s for s, _ in states} == {"PRUNED"}
    assert all(json.loads(v).startswith(reason) for _, v in states)
    # The study has ended with the search: the trial the budget cut is PRUNED, none RUNNING.
    now = study_trials(submitted["db"])
    assert "RUNNING" not in dict(now).values() and len(now) == len(rows), now
    assert reason in stored_text(f"{experiment}/report.html")
    # The result's checkpoint is the best epoch's, as Tune recorded it.
    best = next(r for r in rows if r["trial_id"] == result["best_trial"])
    fs, path = storage(f"{result['best_checkpoint']}/state.pt")
    with fs.open_input_file(path) as f:
        state = torch.load(io.BytesIO(f.read()), weights_only=True)
    assert state["epoch"] + 1 == best["best_epoch"] == result["metrics"]["best_epoch"]


def test_the_same_search_draws_the_same_trials_and_another_seed_others(demo_shards):
    """The searcher's draws are a function of the search's seed: seed 13 twice draws the
    same trials, seed 3 others (that another seed also trains other figures from the same
    draw is tests/train/test_trainer.py's)."""
    import optuna

    from raylab.tune.runner import study_sampler
    from raylab.tune.space import DataLimits

    min_frames = DataLimits.of(demo_shards).min_frames

    def draws(seed: str) -> list[dict]:
        common = ["--root", "/r", "--name", "n", "--seed", seed]
        options = tune_job.build_options(
            tune_job.parse_args([*SEEDED, *common]), str(demo_shards), False, False
        )
        study = optuna.create_study(sampler=study_sampler(options))
        configs = []
        for _ in range(options.num_samples):
            trial = study.ask()
            constants = options.space.define(trial, max_span=min_frames)
            configs.append(trial.params | constants)
            study.tell(trial, 0.5)
        return configs

    drawn = draws(SEED)
    assert draws(SEED) == drawn and draws("3") != drawn
    assert {c["size"] for c in drawn} == {48, 128}  # both what trains and what is pruned


@pytest.fixture(scope="module")
def resumed(demo_shards, ray_head, tmp_path_factory) -> dict:
    """The seeded search again, on local shards, interrupted: the Tune driver (`python
    jobs/tune_t3d.py` on the head, as on a cluster's head node) gets SIGINT once one trial
    has trained all its epochs and the search has created the next one; then `--resume`."""
    root = tmp_path_factory.mktemp("resumed")
    args = ["--data", str(demo_shards), "--root", str(root), "--name", "resumable"]
    env = ray_head["env"] | {"RAY_ADDRESS": ray_head["address"]}
    job = [sys.executable, str(REPO / "jobs" / "tune_t3d.py"), *args, *SEEDED, "--seed", SEED]
    # Output to files: an unread pipe fills up and blocks the job.
    out_file, err_file = root / "out.txt", root / "err.txt"
    with open(out_file, "w") as out, open(err_file, "w") as err:
        proc = subprocess.Popen(job, env=env, stdout=out, stderr=err, text=True)
    experiment = root / "results" / "resumable"
    db = experiment / "optuna.db"

    def trained_and_more():
        # The next trial counts from its creation (one at a time: once Tune has ended the
        # last), not from its Train run's first line: from there to its first epoch, which
        # ends the budget, is a tiny epoch, too short for a poll and a signal to land in.
        full = {t for t, h in history(experiment).items() if any(r.get("epoch") == 2 for r in h)}
        number = trial_numbers(experiment)
        return full if full and max(number.values()) > max(number[t] for t in full) else None

    full = wait_for("a fully trained trial and a later one", trained_and_more, 600, every=0.2)
    before, states = history(experiment), dict(study_trials(db))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=300)
    assert proc.returncode == 0, err_file.read_text()[-3000:]
    done = subprocess.run(job + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        "experiment": experiment,
        "db": db,
        "interrupted": last_json(out_file.read_text()),
        "full": full,
        "before": before,
        "states": states,
        "result": last_json(done.stdout),
    }


def test_interrupted_search_resumes_into_the_same_search(resumed, submitted):
    """Interrupted, the search prints how to resume; `--resume` finishes it in the same study
    (earlier states unchanged, none left RUNNING) without training the finished trial again,
    and its budget counts the epochs trained before. What it ends with is the uninterrupted
    search's (the submitted one, same seed, its shards and results on S3): every trial,
    status, figure and epoch."""
    assert resumed["interrupted"]["interrupted"] is True
    assert "--resume --name resumable" in resumed["interrupted"]["resume"]
    experiment, result = resumed["experiment"], resumed["result"]
    after = history(experiment)
    now = dict(study_trials(resumed["db"]))
    assert "RUNNING" not in now.values(), now
    assert {n: s for n, s in resumed["states"].items() if s != "RUNNING"}.items() <= now.items()
    for trial in resumed["full"]:
        # A finished trial is not trained again: the same epochs, no resume event.
        assert after[trial] == resumed["before"][trial], trial
    uninterrupted, expected = submitted["copy"], last_json(submitted["logs"])
    assert table(experiment) == table(uninterrupted)
    assert epoch_figures(experiment) == epoch_figures(uninterrupted)
    assert result["best_config"] == expected["best_config"]
    untimed = {k: v for k, v in result["metrics"].items() if k not in TIMED}
    assert untimed == {k: v for k, v in expected["metrics"].items() if k not in TIMED}
    assert Path(result["report"]).exists()


def test_the_best_trial_trains_again_exactly_from_its_record(resumed, run_job, tmp_path):
    """The search's reproduce command (best/command.txt: ``jobs/train.py --config
    best/config.json``) trains the best trial's run again, alone: every figure of every
    epoch as the trial had it."""
    experiment, result = resumed["experiment"], resumed["result"]
    command = shlex.split((experiment / "best" / "command.txt").read_text())
    assert command[:2] == ["python", "jobs/train.py"] and "--config" in command
    out = command.index("--out")
    command[out + 1] = str(tmp_path / "again")
    again = run_job("train.py", *command[2:])
    assert again["metrics"]["epoch"] == result["metrics"]["epochs"]
    trial = history(experiment)[result["best_trial"]]

    def figures(lines: list[dict]) -> list[dict]:
        epochs = [r for r in lines if r["event"] == "epoch"]
        shared = set.intersection(*(set(r) for r in epochs)) - TIMED
        return [{k: r[k] for k in sorted(shared)} for r in epochs]

    searched = figures(trial)
    alone = figures([json.loads(x) for x in (tmp_path / "again" / "history.jsonl").open()])
    common = set(searched[0]) & set(alone[0])
    assert {"train_loss", "val_video_top1", "val_loss", "lr"} <= common
    assert [{k: r[k] for k in common} for r in alone] == [
        {k: r[k] for k in common} for r in searched
    ]


def test_each_trial_says_where_its_start_went(submitted):
    """benchmarks/trial_start.py reads a search's trials: for each trained one, its first
    epoch against its later ones, the points of its start in the order reached, and the
    search's time between one trial's last epoch and the next one's start."""
    rows = trial_start.trial_starts(submitted["copy"])
    assert [r["epochs"] for r in rows] == [2, 1]
    for row in rows:
        points = [row["points"][p] for p in ("process", "loop", "model", "batch", "step")]
        points += [row["points"][p] for p in ("train", "val", "report")]
        assert points == sorted(points), row
        # Tune times the first epoch from before the trial's own clock starts.
        assert row["first"] >= row["points"]["train"]
        assert row["train_s"][0] > 0 and row["val_s"][0] > 0
    assert rows[0]["steady"] is not None and rows[1]["steady"] is None  # 2 epochs, then 1
    assert "gap" not in rows[0] and rows[1]["gap"] > 0


def test_the_driver_sizes_each_trial_it_draws(submitted):
    """The search's driver measures each drawn network and hands the trial its batch and
    costs in the config (``raylab.tune.space.size_trial``); the trial trains at that batch
    and reports those costs, and the search's table shows the knobs, not the sizing."""
    trained = 0
    for params in sorted(submitted["copy"].glob("run_trial_*/params.json")):
        config = json.loads(params.read_text())
        results = [json.loads(x) for x in (params.parent / "result.json").read_text().splitlines()]
        epochs = [r for r in results if "epoch" in r]
        if epochs:
            trained += 1
            sizing = config[SIZING_KEY]
            for key in ("batch_size", "gmacs", "params_m", "memory_gib"):
                assert {r[key] for r in epochs} == {sizing[key]}, key
    assert trained == 2
    # Tune's folder names keep the knobs (cut at 130 characters), not the sizing.
    for folder in submitted["copy"].glob("run_trial_*"):
        assert "stride=" in folder.name and "gmacs=" not in folder.name, folder.name
    rows = json.loads((submitted["copy"] / "trials.json").read_text())
    assert rows and not [r for r in rows if SIZING_KEY in r]


def test_the_documented_command_runs_the_embedded_search():
    """docs/search.md's command line, given shards, runs the search `make demo` runs."""
    job = tune_job
    doc = (REPO / "docs" / "search.md").read_text()
    block = re.search(r"The same search from the command line.*?```bash\n(.*?)```", doc, re.S)
    words = shlex.split(block.group(1).replace("\\\n", " "))
    assert words[:2] == ["python", "jobs/tune_t3d.py"]
    common = ["--root", "/r", "--name", "n"]
    documented = job.build_options(job.parse_args([*words[2:], *common]), "s", False, False)
    embedded = job.build_options(job.parse_args(common), "s", False, True)
    assert documented == embedded
