"""Autoscaling, simulated on one machine with Ray's fake multi-node provider.

A head that schedules (1 CPU, no GPU) and two worker types that start at zero: GPU trainers
advertising a fake GPU, and CPU decoders advertising the ``decoder`` custom resource, as in
cluster.yaml. A Tune search whose Train workers ask for GPUs and whose decode tasks ask for
decoder nodes must make the autoscaler add both kinds of node, finish, and let them go.
The fake GPUs are only advertised: training runs on the CPU (gloo), which is the point of
``build_trainer`` choosing the backend from the torch build, not from the resources.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from ray.cluster_utils import AutoscalingCluster

IDLE_TIMEOUT_MIN = 0.1  # 6 s: how long an idle worker node lives
NODE_TYPES = {
    "gpu_trainer": {
        "resources": {"CPU": 1, "GPU": 1, "object_store_memory": 300 * 2**20},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 2,
    },
    "cpu_decoder": {
        "resources": {"CPU": 1, "decoder": 1, "object_store_memory": 300 * 2**20},
        "node_config": {},
        "min_workers": 0,
        "max_workers": 1,
    },
}


class LocalAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` with its config inline: the 2.60 wheel does not ship the
    ``fake_multi_node/example.yaml`` it reads."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
        types = dict(worker_node_types)
        types["ray.head.default"] = {
            "resources": head_resources,
            "node_config": {},
            "max_workers": 0,
        }
        return {
            "cluster_name": "fake_multinode",
            "max_workers": 8,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": types,
            "head_node_type": "ray.head.default",
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": IDLE_TIMEOUT_MIN,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "auth": {"ssh_user": "ubuntu"},
        } | kw


def alive_nodes() -> dict[str, str]:
    """Alive nodes: node id -> kind (head, gpu_trainer, cpu_decoder)."""
    import ray

    out = {}
    for node in ray.nodes():
        if node["Alive"]:
            res = node["Resources"]
            gpu, decoder = res.get("GPU"), "decoder" in res
            out[node["NodeID"]] = "gpu_trainer" if gpu else "cpu_decoder" if decoder else "head"
    return out


def node_kinds() -> dict[str, int]:
    """Alive nodes by kind: head, gpu_trainer, cpu_decoder."""
    kinds = {"head": 0, "gpu_trainer": 0, "cpu_decoder": 0}
    for kind in alive_nodes().values():
        kinds[kind] += 1
    return kinds


class Timeline(threading.Thread):
    """Samples the alive nodes by kind every 0.25 s: ``[(seconds, kinds), ...]``."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[tuple[float, dict[str, int]]] = []
        self.seen: dict[str, str] = {}  # every node ever alive: id -> kind
        self.start_time = time.monotonic()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            nodes = alive_nodes()
            self.seen |= nodes
            kinds = {
                k: sum(v == k for v in nodes.values())
                for k in ("head", "gpu_trainer", "cpu_decoder")
            }
            self.samples.append((time.monotonic() - self.start_time, kinds))
            time.sleep(0.25)

    def first(self, kind: str, at_least: int = 1, after: float = 0.0) -> float | None:
        return next((t for t, k in self.samples if t >= after and k[kind] >= at_least), None)

    def peak(self, kind: str) -> int:
        return max((k[kind] for _, k in self.samples), default=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The fake cluster, connected, with a tiny demo set ingested and the workers gone again."""
    import ray

    from raylab.data.ingest import EncodeParams, ingest
    from raylab.data.synthetic import make_demo_dataset

    # The fake provider runs `ray start` / `ray stop` from PATH: this environment's.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.pop("RAY_ADDRESS", None)
    fake = LocalAutoscalingCluster(head_resources={"CPU": 1}, worker_node_types=NODE_TYPES)
    fake.start()
    try:
        ray.init(address="auto", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        root = tmp_path_factory.mktemp("autoscale")
        make_demo_dataset(
            root / "videos", videos_per_class=2, seed=0, frames=24, height=96, width=128
        )
        ingest(
            root / "videos",
            "ucf101",
            root / "shards",
            params=EncodeParams(short_sides=(64,)),
            progress=False,
        )
        wait_for(head_only, 120)
        yield root
    finally:
        ray.shutdown()
        fake.shutdown()


def head_only() -> bool:
    return node_kinds() == {"head": 1, "gpu_trainer": 0, "cpu_decoder": 0}


def wait_for(condition, timeout: float, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout} s: {node_kinds()}")
        time.sleep(step)


def placement(kinds: dict[str, str]) -> dict[str, list[str]]:
    """The kind of node (by ``kinds``: node id -> kind) each decode task and each Train
    worker of this Ray session ran on, from the state API's task and actor records."""
    from ray.util.state import list_actors, list_tasks

    tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
    actors = list_actors(detail=True, limit=10_000, raise_on_missing_output=False)
    return {
        "decode": [kinds.get(t.node_id, t.node_id) for t in tasks if "UnitDecoder" in t.name],
        "train": [
            kinds.get(a.node_id, a.node_id) for a in actors if a.class_name == "RayTrainWorker"
        ],
    }


def tune_options(root: Path, name: str, **kw):
    from raylab.tune.options import TuneOptions
    from raylab.tune.space import SearchSpace

    space = SearchSpace(
        family=("stm",), frames=(kw.pop("frames", 4),), size=(32,), stride=(1,), stm_stages=("45",)
    )
    return TuneOptions(
        **{
            "shards": str(root / "shards"),
            "storage_path": str(root / "results"),
            "name": name,
            "space": space,
            "width": 0.0625,
            "max_batch": 4,
            "memory_gib": 1.0,
            "use_gpu": True,  # each Train worker asks for a GPU: only trainer nodes have one
            "decoder_resource": "decoder",  # each decode task asks for a decoder node
        }
        | kw
    )


def test_nodes_come_as_trials_queue_and_go_when_idle(cluster):
    """Two trials at once, each wanting a GPU node and decoding on a decoder node. Checked:
    both kinds of node were added (two GPU nodes: one per concurrent trial), every trial
    finished, and afterwards the cluster shrank back to the head alone."""
    from raylab.tune.runner import build_tuner, trial_table

    # No early stopping (grace period past the last epoch): a trial that ASHA stops is
    # killed with its Train controller, whose autoscaler request then holds its GPU node
    # for 180 s; here every trial ends on its own, so idle nodes go after the idle timeout.
    options = tune_options(
        cluster, "scale", num_samples=2, max_epochs=2, concurrency=2, grace_period=3
    )
    wait_for(head_only, 240)
    timeline = Timeline()
    timeline.start()
    try:
        results = build_tuner(options).fit()
        finished = time.monotonic() - timeline.start_time
        wait_for(head_only, 120)
        gone = time.monotonic() - timeline.start_time
    finally:
        timeline.done.set()
        timeline.join()

    rows = trial_table(results, options.max_epochs)
    assert [r["status"] for r in rows] == ["done", "done"], rows
    assert all(r["epochs"] == 2 for r in rows)
    assert timeline.peak("gpu_trainer") == 2
    assert timeline.peak("cpu_decoder") == 1
    # Where the work ran, from Ray's state API: every decode task on a decoder node, and
    # every Train worker on a GPU node.
    where = placement(timeline.seen)
    assert where["decode"] and set(where["decode"]) == {"cpu_decoder"}, where
    assert where["train"] and set(where["train"]) == {"gpu_trainer"}, where
    timings = {
        "first_gpu_node_s": timeline.first("gpu_trainer"),
        "second_gpu_node_s": timeline.first("gpu_trainer", 2),
        "first_decoder_node_s": timeline.first("cpu_decoder"),
        "search_s": finished,
        "scale_down_s": gone - finished,
        "idle_timeout_s": IDLE_TIMEOUT_MIN * 60,
    }
    print("autoscaling timings:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    (cluster / "autoscaling_timings.json").write_text(json.dumps(timings))


def test_a_killed_trainer_node_is_replaced_and_the_trial_resumes(cluster):
    """Kill the GPU node (its raylet, and with it the Train worker) of a running trial in
    the middle of training epoch 2 or 3, once an earlier epoch is checkpointed. Checked: the
    autoscaler brings up a replacement node, the trial resumes from its checkpoint and
    finishes all 3 epochs, and every epoch Tune had received before the kill is still in the
    trial's results, unchanged."""
    from raylab.tune.runner import build_tuner

    options = tune_options(
        cluster, "node_kill", num_samples=1, max_epochs=3, concurrency=1, max_batch=1, frames=16
    )
    exp = Path(options.experiment_dir)
    killed: dict = {}

    def kill_node_mid_epoch() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for progress in exp.glob("train_runs/train-*/progress/rank-0"):
                run = progress.parent.parent
                try:
                    epoch, step, pid = map(int, progress.read_text().split())
                    lines = (run / "history.jsonl").read_text().splitlines()
                    history = [x for x in lines if json.loads(x)["event"] == "epoch"]
                    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
                    latest = snapshot["latest_checkpoint_result"]["metrics"]["epoch"]
                except (ValueError, FileNotFoundError, KeyError, TypeError):
                    continue
                # Steps 2-6 of 8 of epoch 2 or 3, every earlier epoch reported, and some
                # checkpoint registered by the Train controller (which lags a little).
                if epoch >= 1 and 2 <= step <= 6 and len(history) == epoch and latest >= 1:
                    stat = Path(f"/proc/{pid}/stat").read_text()  # "pid (comm) state ppid"
                    raylet = int(stat.rsplit(")", 1)[1].split()[1])  # the worker's parent
                    os.kill(raylet, signal.SIGKILL)
                    killed.update(
                        epoch=epoch + 1,
                        registered=latest,
                        worker=pid,
                        kinds=node_kinds(),
                        before=history,
                    )
                    return
            time.sleep(0.02)

    wait_for(head_only, 240)  # no node left over: the one killed is the trial's only one
    watcher = threading.Thread(target=kill_node_mid_epoch, daemon=True)
    watcher.start()
    timeline = Timeline()
    timeline.start()
    try:
        results = build_tuner(options).fit()
    finally:
        timeline.done.set()
        timeline.join()
    watcher.join(timeout=5)

    assert killed, "the trial's node was never caught mid-epoch"
    assert not Path(f"/proc/{killed['worker']}").exists()  # the node took its worker along
    result = results[0]
    assert result.error is None
    frame = result.metrics_dataframe
    # The restarted Train run reports the epoch it resumed from once more (marked
    # ``restored``: the search's driver may have missed it); every epoch trained once.
    restored = frame["restored"].eq(True) if "restored" in frame else frame["epoch"] < 0
    assert list(frame.loc[~restored, "epoch"]) == [1, 2, 3]
    assert len(frame.loc[restored]) == 1
    # Every epoch registered before the kill (so it had reached Tune) is still there,
    # unchanged; the run resumed from a checkpoint before the interrupted epoch.
    reported = frame.loc[~restored].set_index("epoch")
    for record in map(json.loads, killed["before"][: killed["registered"]]):
        assert reported.loc[record["epoch"], "train_loss"] == pytest.approx(record["train_loss"])
    history = [json.loads(x) for x in next(exp.glob("train_runs/train-*/history.jsonl")).open()]
    resumed = [r["from_epoch"] for r in history if r["event"] == "resumed"]
    assert len(resumed) == 1 and killed["registered"] <= resumed[0] < killed["epoch"]
    # The replacement: one GPU node when it was killed, a second one brought up after.
    assert killed["kinds"]["gpu_trainer"] == 1
    assert list(timeline.seen.values()).count("gpu_trainer") == 2
