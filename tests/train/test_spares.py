"""Spare worker processes (raylab.train.spares) on a real local Ray: an actor asked for after
its spare was started runs in that spare."""

import sys
import time

import pytest

from raylab.train import spares
from raylab.train.worker import process_created_at

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _actor_class(ray):
    @ray.remote(num_cpus=0)
    class Probe:
        def facts(self) -> tuple[float | None, str]:
            return process_created_at(), spares.this_process_runtime_env()

    return Probe


def test_an_actor_runs_in_the_spare_of_its_runtime_environment(ray_session):
    ray = ray_session
    probe = _actor_class(ray)
    env = {"env_vars": {"RAYLAB_SPARE_TEST": "1"}}  # a kind no other test's actors are
    # The serialised form of this kind, as a process of it reads it (Ray matches on it).
    first = probe.options(runtime_env=env).remote()
    _, serialised = ray.get(first.facts.remote())
    ray.kill(first)

    assert spares.prestart(1, serialised)
    time.sleep(5)  # the spare starts; nothing asks for a process meanwhile
    asked = time.time()
    second = probe.options(runtime_env=env).remote()
    created, _ = ray.get(second.facts.remote())
    ray.kill(second)
    # Started before it was asked for: the spare, not a process started on demand.
    assert created < asked - 1

    third = probe.options(runtime_env=env).remote()  # no spare left: a new process
    asked = time.time()
    created, _ = ray.get(third.facts.remote())
    ray.kill(third)
    assert created > asked - 1


def test_the_keeper_asks_for_spares_that_outlive_the_asker(ray_session):
    """The search's keeper asks for the spares a trial hands it, one at a time, after the
    trial's own processes have gone."""
    ray = ray_session
    probe = _actor_class(ray)
    env = {"env_vars": {"RAYLAB_SPARE_TEST": "2"}}
    first = probe.options(runtime_env=env).remote()
    _, serialised = ray.get(first.facts.remote())
    keeper = spares.start_keeper()

    @ray.remote(num_cpus=0)
    def trial(requests):
        from raylab.train import spares

        spares.ask(requests)  # and ends at once

    node = ray.get_runtime_context().get_node_id()
    ray.get(trial.remote([(2, serialised, node)]))
    time.sleep(2 * spares.PAUSE_S + 4)
    asked = time.time()
    probes = [probe.options(runtime_env=env).remote() for _ in range(2)]
    created = [ray.get(p.facts.remote())[0] for p in probes]
    assert all(c < asked - 1 for c in created)
    for p in probes:
        ray.kill(p)
    ray.kill(first)
    ray.kill(keeper)
