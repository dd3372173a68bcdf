"""The test session's own Ray worker processes, found through /proc.

Other Ray sessions on the machine (a test's `ray start` head, another checkout's tests) run
workers of their own; a test that kills a worker must kill one of its own session's."""

from __future__ import annotations

from pathlib import Path


def session_raylet_pid() -> int:
    """The raylet of this process's Ray session: the parent of its worker processes."""
    import ray

    return raylet_pid(ray._private.worker._global_node)


def session_workers_running(task: str) -> list[int]:
    """Pids of this session's workers running ``task`` now (Ray names a busy worker
    ``ray::<task>``), e.g. ``_encode_task`` or ``MapBatches(UnitDecoder)``."""
    return workers_running(session_raylet_pid(), f"ray::{task}")


def raylet_pid(node) -> int:
    """The raylet of a ``ray.cluster_utils.Cluster`` node: the parent of its workers."""
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def workers_running(raylet: int, prefix: str, contains: str = "") -> list[int]:
    """Pids of the workers of ``raylet`` whose command line starts with ``prefix`` (and
    holds ``contains``): a busy worker is named ``ray::<task>``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if not cmdline.startswith(prefix.encode()) or contains.encode() not in cmdline:
                continue
            # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces.
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # the process ended while being read
        if ppid == raylet:
            pids.append(int(proc.name))
    return pids
