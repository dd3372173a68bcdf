"""Spare worker processes: the next trial's actors start in processes already running.

Each trial of a search is a Ray Train run, and each run starts its processes afresh, one
after another: Tune's trial actor and the queue its reports travel by, Ray Train's
controller, its placement-group cleaner, synchronisation actor and dataset manager, the
Train workers, and a decode task's process (a trial's decode tasks run in its placement
group, whose processes Ray ends with it). The raylet's ``PrestartWorkers`` call starts
worker processes for a job and a runtime environment before anything asks for one, and
keeps them for a while; an actor or task then takes one that is ready.

Ray hands an actor or task only a process started for its own runtime environment. A trial
has two: its trial actor's (the job's) and the one Ray Train gives its controller, which
everything the controller starts inherits (its helpers, the Train workers and the workers'
decode tasks). So once a trial has reported its first epoch, :class:`KeepSpares` (in the
controller) asks for spares of both kinds, as many as a trial starts on the node; on a
cluster, the first worker of each other node asks for its node's
(:func:`keep_worker_spares`). The next trial takes them. A raylet starts at most as many
processes at once as its node has CPUs and drops a request beyond that, so the spares are
asked for one at a time, a moment apart, by one :class:`SpareKeeper` the search's driver
starts: a trial of short epochs may end before its spares are all asked for.

The spares are bare Python processes with Ray loaded (about half a second of a core each):
ones that imported torch as well would start the next trial sooner but cost the running
trial more on two cores, and size torch's thread pool before Ray gives the process its CPUs
(docs/results.md, "Trial start").

``PrestartWorkers`` is the raylet's gRPC service, not a public Ray API: a failed call is
logged once and costs only the time it would have saved.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time

import ray
from ray.train import UserCallback

# Processes a trial starts, by kind (see above): the trial's two; the controller's four,
# and on each worker's node, the workers and a decode task's process.
TRIAL_PROCESSES = 2
CONTROLLER_PROCESSES = 4
DECODERS = 1
# Between two requests: long enough for the process asked for to register with its raylet
# (a Python start and Ray's import).
PAUSE_S = 1.0

# How long a spare waits for the next trial before Ray may reclaim it. Longer than a trial
# on the demo by far; a trial that outlasts it (hours on a GPU) finds none and starts its
# processes as it would without spares.
KEEP_ALIVE_S = 1800

_log = logging.getLogger(__name__)
_failed = False


def enabled() -> bool:
    """Whether searches keep spares: when the environment says ``RAYLAB_SPARES=1``, with
    raylab's other start-up cuts (:func:`raylab.train.trainer.quick_start`). Off by default:
    on two cores they do not shorten the search, and the raylet, counting the spares beside
    a trial's processes, warns on the console once a node has 4x its CPUs in Python workers
    (``benchmarks/trial_start.py`` measures them, docs/results.md)."""
    from raylab.train.trainer import quick_start

    return quick_start() and os.environ.get("RAYLAB_SPARES", "0") == "1"


def this_process_runtime_env() -> str:
    """This worker process's runtime environment, serialised as Ray matches it against the
    environment a process was started for."""
    return ray._private.worker.global_worker.core_worker.get_current_runtime_env()


def prestart(
    count: int,
    runtime_env: str,
    node_id: str | None = None,
    keep_alive_s: int = KEEP_ALIVE_S,
) -> bool:
    """Ask the raylet of ``node_id`` (default: this process's node) to start ``count``
    worker processes of this job for ``runtime_env`` (serialised), kept ``keep_alive_s``.
    False if the call failed."""
    global _failed
    if count < 1:
        return True
    try:
        from ray._private.grpc_utils import init_grpc_channel
        from ray.core.generated import (
            common_pb2,
            node_manager_pb2,
            node_manager_pb2_grpc,
            runtime_environment_pb2,
        )

        context = ray.get_runtime_context()
        node_id = node_id or context.get_node_id()
        node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
        info = runtime_environment_pb2.RuntimeEnvInfo(serialized_runtime_env=runtime_env)
        request = node_manager_pb2.PrestartWorkersRequest(
            language=common_pb2.Language.PYTHON,
            job_id=bytes.fromhex(context.get_job_id()),
            runtime_env_info=info,
            keep_alive_duration_secs=keep_alive_s,
            num_workers=count,
        )
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        with init_grpc_channel(address) as channel:
            node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
                request, timeout=10
            )
        return True
    except Exception as error:  # best effort: a trial starts without spares all the same
        if not _failed:
            _log.warning("could not start spare worker processes (%s): trials start cold", error)
        _failed = True
        return False


Request = tuple[int, str, str]  # (processes, serialised runtime environment, node id)


def _ask_in_turn(requests: list[Request], pause_s: float) -> None:
    for count, runtime_env, node_id in requests:
        for _ in range(count):
            if not prestart(1, runtime_env, node_id):
                return
            time.sleep(pause_s)


class SpareKeeper:
    """The search's one asker of spares (an actor its driver starts: :func:`start_keeper`):
    it outlives the trials that ask, whose processes may end a moment after their first
    epoch, and asks for one process at a time, ``pause_s`` apart, whoever asked."""

    def __init__(self, pause_s: float = PAUSE_S) -> None:
        self.pause_s = pause_s
        self.requests: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name="raylab-spares", daemon=True).start()

    def ask(self, requests: list[Request]) -> None:
        self.requests.put(requests)

    def _serve(self) -> None:
        while True:
            _ask_in_turn(self.requests.get(), self.pause_s)


KEEPER = "raylab-spare-keeper"


def start_keeper():
    """Start the search's :class:`SpareKeeper` (in its driver, which holds the returned
    handle: the keeper lives as long as the search)."""
    return ray.remote(num_cpus=0)(SpareKeeper).options(name=KEEPER, get_if_exists=True).remote()


def ask(requests: list[Request]) -> None:
    """Hand ``requests`` to the search's keeper; without one (a run outside a search), ask in
    a thread of this process."""
    try:
        keeper = ray.get_actor(KEEPER)
    except ValueError:
        threading.Thread(target=_ask_in_turn, args=(requests, PAUSE_S), daemon=True).start()
        return
    keeper.ask.remote(requests)


def _single_node() -> bool:
    return sum(1 for node in ray.nodes() if node["Alive"]) == 1


def keep_worker_spares(local_workers: int) -> None:
    """On a cluster, spares for the next trial's workers and decode task on this node (the
    Train worker of local rank 0 calls it); on one machine the controller asks for them."""
    if not _single_node():
        node = ray.get_runtime_context().get_node_id()
        ask([(local_workers + DECODERS, this_process_runtime_env(), node)])


class KeepSpares(UserCallback):
    """Ray Train callback, run in the controller: after a run's first report, spares for
    the next trial, of the trial's kind (``trial_env``, read in the trial actor:
    :meth:`for_this_trial`) and of the controller's."""

    def __init__(self, trial_env: str) -> None:
        self.trial_env = trial_env
        self.asked = False

    @classmethod
    def for_this_trial(cls) -> KeepSpares:
        """The callback of the trial whose process calls it."""
        return cls(this_process_runtime_env())

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if self.asked:
            return
        self.asked = True
        here = CONTROLLER_PROCESSES
        if _single_node():  # the workers run here too
            here += run_context.scaling_config.num_workers + DECODERS
        node = ray.get_runtime_context().get_node_id()  # the trial's too: the head
        ask([(TRIAL_PROCESSES, self.trial_env, node), (here, this_process_runtime_env(), node)])
