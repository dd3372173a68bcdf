"""Where the checkout is, for tests that run its jobs and read its docs."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
