"""Names the training loop, the search, evaluation and the report share."""

import re

# What checkpoints are ranked by, the search maximises and the report leads with.
METRIC = "val_video_top1"
# How a search trial ended: trained every epoch, stopped early (ASHA, a chance-level stop or
# the time budget), pruned before it started, or failed.
TRIAL_STATUSES = ("done", "stopped", "pruned", "error")


def trial_status(
    *, pruned: bool, failed: bool, ended: bool, epochs: int, max_epochs: int | None
) -> str:
    """How a search trial ended, one of TRIAL_STATUSES, or ``running`` while it has not.

    The console (Tune's live trials), the job's trial table (Tune's results) and the report
    (trial folders) read these facts from different places and judge them here: pruned
    before it started, failed, then trained every epoch (``done``) or fewer (``stopped``:
    ASHA, the chance-level stop, or the time budget ended it).
    """
    if pruned:
        return "pruned"
    if failed:
        return "error"
    if not ended:
        return "running"
    if max_epochs and epochs < max_epochs:
        return "stopped"
    return "done"


def folder_trial_id(folder: str) -> str:
    """The trial id in the name of a Tune trial's folder (``run_trial_<id>_<n>_<config>_<date>``),
    for a trial that ended before its first result said it; else the name itself."""
    named = re.search(r"_([0-9a-f]{8})_\d+_", folder)
    return named.group(1) if named else folder
