"""Batch inference with trained checkpoints: the routine every job shares (``batch``),
multi-view evaluation on shards (``evaluate``), per-video features (``features``) and their
SVM / PCA / t-SNE analysis (``analysis``, no Ray), predictions on source videos
(``predict``)."""
