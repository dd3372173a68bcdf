"""Progress bars for long work, on a terminal and in a log alike."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(**kwargs) -> tqdm:
    """A tqdm bar (same arguments) that redraws often on a terminal but every 15 seconds
    where its output is a file or a Ray job's log, in which every redraw is a line."""
    stream = kwargs.get("file") or sys.stderr
    if not (hasattr(stream, "isatty") and stream.isatty()):
        kwargs.setdefault("mininterval", 15.0)
    return tqdm(**kwargs)
