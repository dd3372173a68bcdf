"""How many trials run at once, and how much memory each Train worker may plan for.

Both are read from the cluster's resources (``ray.cluster_resources()``) when an experiment's
tuner is built; the memory budget caps the batch size a trial's plan picks
(:class:`raylab.tune.space.Budget`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raylab.tune.options import TuneOptions

# Device memory (GiB) by the accelerator type Ray advertises, for the batch-size estimate.
ACCELERATOR_GIB = {"H100": 80, "H200": 141, "A100": 40, "A10G": 24, "L4": 24, "T4": 16, "V100": 16}


def trial_concurrency(options: TuneOptions, resources: dict) -> int:
    """Trials that fit at once: each needs its workers' CPUs (and GPUs) plus one decoder.

    More would leave Train workers waiting for CPUs that never free up.
    """
    if options.concurrency:
        return options.concurrency
    per_trial = options.workers * options.cpus_per_worker + options.decoder_cpus
    fit = int(resources.get("CPU", 1) // per_trial)
    if options.use_gpu:
        fit = min(fit, int(resources.get("GPU", 0) // options.workers))
    return max(1, fit)


def memory_budget(options: TuneOptions, resources: dict, concurrency: int) -> float:
    """GiB a worker may use: the flag, the GPU's memory, or half the machine's RAM per trial.

    The machine's total, not what is free now: the batch cap it sets decides a trial's
    numbers, and a search must not change with what else happens to run beside it.
    """
    if options.memory_gib:
        return options.memory_gib
    if options.use_gpu:
        for key in resources:
            kind = key.removeprefix("accelerator_type:")
            if key.startswith("accelerator_type:") and kind in ACCELERATOR_GIB:
                return 0.9 * ACCELERATOR_GIB[kind]
        return 0.9 * 16
    return 0.5 * total_ram_gib() / (concurrency * options.workers)


def total_ram_gib() -> float:
    """The machine's memory (MemTotal), in GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
