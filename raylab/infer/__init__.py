"""Batch inference with trained checkpoints: multi-view evaluation on shards (``evaluate``),
per-video features and their analysis (``features``), predictions on source videos
(``predict``)."""
