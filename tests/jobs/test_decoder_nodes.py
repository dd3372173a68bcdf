"""Decoders on their own nodes: jobs/train.py on a simulated multi-node cluster.

A head, one node advertising a GPU (the Train worker falls back to the CPU on it, as on any
machine whose GPU this torch build cannot use) and two CPU-only decoder nodes with the
``decoder`` resource, all logical nodes of ``ray.cluster_utils.Cluster`` on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from checkout import REPO
from processes import raylet_pid, workers_running

# A node whose raylet is gone is declared dead after 3 failed health checks a second apart
# rather than Ray's half minute: its decode task is retried once Ray knows, and a longer wait
# proves nothing. A live raylet has 3 s to answer each check, on a loaded machine too.
DEAD_NODE_FOUND_SOON = {
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 3000,
    "health_check_failure_threshold": 3,
}
# The first epoch warms every process up; a decoder node goes in a later one. Passes are
# decoded ahead of the trainer (raylab.train.epoch.Lookahead), so a tiny second epoch can be
# decoded before the trainer reaches it; the third is started no sooner than the second is
# taken, so decoding still runs once the trainer is past the first.
EPOCHS = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_decoding_stays_on_decoder_nodes_and_an_epoch_survives_losing_one(demo_shards, tmp_path):
    """Checked from Ray's state API: every decode task ran on a decoder node and the Train
    worker on the GPU node. One decoder node is removed while a decode task runs on it: the
    job still succeeds and every epoch trained on every training video exactly once."""
    from ray.cluster_utils import Cluster
    from ray.util.state import list_actors, list_tasks

    from raylab.data.storage import load_manifest

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,  # the state API is served by the dashboard
            "dashboard_port": free_port(),
            "_system_config": DEAD_NODE_FOUND_SOON,
        },
    )
    killed: dict = {}
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        decoders = [cluster.add_node(num_cpus=1, resources={"decoder": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        kinds = {gpu_node.node_id: "gpu"} | {d.node_id: "decoder" for d in decoders}
        kinds[cluster.head_node.node_id] = "head"
        run = tmp_path / "run"
        cmd = [
            sys.executable, str(REPO / "jobs" / "train.py"),
            *("--data", str(demo_shards), "--model", "c3d", "--out", str(run)),
            *("--width", "0.125", "--model-option", "head=pooled", "--frames", "16"),
            *("--size", "32", "--epochs", str(EPOCHS), "--batch-size", "4"),
            *("--gpu", "--decoder-resource", "decoder", "--max-failures", "0"),
        ]  # fmt: skip
        env = os.environ | {"RAY_ADDRESS": cluster.address}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def kill_a_busy_decoder_node() -> None:
            # From epoch 2 on (the first has warmed every process up), as soon as a decode
            # task runs on the first decoder node, that node goes, task and all.
            # (The state API reports task states a second or so late: too late for tasks this
            # short, so the node's own worker processes say what runs there.)
            progress = run / "progress" / "rank-0"
            first = decoders[0]
            raylet = raylet_pid(first)
            while proc.poll() is None and not killed:
                words = progress.read_text().split() if progress.exists() else []
                epoch = int(words[0]) if words else 0  # empty while the loop rewrites it
                if epoch >= 1 and workers_running(raylet, "ray::", "UnitDecoder"):
                    killed["epoch"] = epoch + 1
                    cluster.remove_node(first, allow_graceful=False)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_a_busy_decoder_node)
        killer.start()
        stdout, stderr = (b.decode() for b in proc.communicate(timeout=600))
        killer.join()
        assert proc.returncode == 0, stderr[-3000:]
        assert killed, "no decode task ran on the first decoder node after epoch 1"

        # A task attempt's node comes with its worker's own events, flushed a second or so
        # after it starts: an attempt that ran as the job ended may not have reported it yet.
        deadline = time.monotonic() + 30
        while True:
            tasks = list_tasks(address=cluster.address, detail=True, limit=10_000,
                               raise_on_missing_output=False)  # fmt: skip
            decoding = [t for t in tasks if "UnitDecoder" in t.name]
            if all(t.node_id for t in decoding) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        actors = list_actors(address=cluster.address, detail=True, limit=10_000,
                             raise_on_missing_output=False)  # fmt: skip
        decode = {kinds.get(t.node_id, t.node_id) for t in decoding}
        train = [kinds.get(a.node_id) for a in actors if a.class_name == "RayTrainWorker"]
        assert decode == {"decoder"}
        assert train and set(train) == {"gpu"}
    finally:
        cluster.shutdown()

    n_train = load_manifest(demo_shards)["splits"]["train"]
    epochs = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if e.get("event") == "epoch"]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))
    for e in epochs:  # every training video once per epoch, none lost, none twice
        assert (e["train_clips"], e["decode_failures"]) == (n_train, 0), e
    assert json.loads(stdout.strip().splitlines()[-1])["metrics"]["epochs"] == EPOCHS
