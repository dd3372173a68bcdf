"""Names the training loop, the search, evaluation and the report share."""

# What checkpoints are ranked by, the search maximises and the report leads with.
METRIC = "val_video_top1"
# How a search trial ended: trained every epoch, stopped early (ASHA, a chance-level stop or
# the time budget), pruned before it started, or failed.
TRIAL_STATUSES = ("done", "stopped", "pruned", "error")
