"""Spare worker processes (raylab.train.spares) on a real local Ray: an actor asked for after
its spare was started runs in that spare, a process that was waiting idle before it was asked
for; without one, in a new process."""

import os
import sys
import time
from types import SimpleNamespace

import pytest

from raylab.train import spares

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def idle_pids() -> set[int]:
    """Ray's worker processes waiting for work (titled ``ray::IDLE``) on this machine."""
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::IDLE"):
                    pids.add(int(pid))
        except OSError:
            pass
    return pids


def _probe(ray, kind: str):
    """An actor class of its own runtime environment (no other test's actors share it)."""

    @ray.remote(num_cpus=0)
    class Probe:
        def facts(self) -> tuple[int, str]:
            return os.getpid(), spares.this_process_runtime_env()

    return Probe.options(runtime_env={"env_vars": {"RAYLAB_SPARE_TEST": kind}})


def _serialised(probe) -> str:
    """The kind's serialised runtime environment, as a process of it reads it (Ray matches
    spares on it)."""
    import ray

    actor = probe.remote()
    _, env = ray.get(actor.facts.remote())
    ray.kill(actor)
    return env


def _runs_in_a_waiting_process(ray, probe) -> bool:
    waiting = idle_pids()
    actor = probe.remote()
    pid, _ = ray.get(actor.facts.remote())
    ray.kill(actor)
    return pid in waiting


def test_an_actor_runs_in_the_spare_of_its_runtime_environment(ray_session):
    ray = ray_session
    probe = _probe(ray, "one")
    assert spares.prestart(1, _serialised(probe))
    time.sleep(5)  # the spare starts and registers; nothing asks for a process meanwhile
    assert _runs_in_a_waiting_process(ray, probe)
    assert not _runs_in_a_waiting_process(ray, probe)  # no spare left: a new process


def test_a_trial_leaves_spares_of_both_its_kinds_through_the_keeper(ray_session):
    """What a trial's controller does after its first report (KeepSpares), handed to the
    search's keeper, which asks for them after the controller has gone: spares for the next
    trial's actor and for its controller's kind."""
    ray = ray_session
    trial, controller = _probe(ray, "trial"), _probe(ray, "controller")
    keeper = spares.start_keeper()

    @ray.remote(num_cpus=0, max_calls=1)  # its process ends with it, as a controller's
    def first_report(trial_env: str) -> None:
        import ray.train

        from raylab.train import spares

        context = SimpleNamespace(scaling_config=ray.train.ScalingConfig(num_workers=1))
        spares.KeepSpares(trial_env).after_report(context, [{}], None)  # and ends at once

    ray.get(first_report.options(runtime_env={"env_vars": {"RAYLAB_SPARE_TEST": "controller"}})
            .remote(_serialised(trial)))  # fmt: skip
    asked = spares.TRIAL_PROCESSES + spares.CONTROLLER_PROCESSES + 1 + spares.DECODERS
    time.sleep(asked * spares.PAUSE_S + 4)
    assert _runs_in_a_waiting_process(ray, trial)
    assert _runs_in_a_waiting_process(ray, controller)
    ray.kill(keeper)
