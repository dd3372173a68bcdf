"""What every job in ``jobs/`` shares: how a user's mistake ends it.

A missing shard folder, an unknown model, a clip the videos cannot give: the job ends with
one line on stderr naming the job, the input and what to do (the error's own message), and
exit status 1, never a traceback. ``RAYLAB_TRACEBACK=1`` shows the traceback instead, for
a mistake that turns out to be raylab's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TypeVar

# What a user's input raises: a path that is not there, a value that is not allowed.
USER_MISTAKES = (FileNotFoundError, NotADirectoryError, ValueError)

Main = TypeVar("Main", bound=Callable)


def one_line_errors(job: str) -> Callable[[Main], Main]:
    """Decorate a job's ``main(argv)``: a user's mistake ends it as :mod:`raylab.jobs` says."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except USER_MISTAKES as err:
                if os.environ.get("RAYLAB_TRACEBACK"):
                    raise
                message = " ".join(str(err).split()) or type(err).__name__
                raise SystemExit(f"{job}: {message}") from None

        return run  # type: ignore[return-value]

    return wrap


def model_option_flags(items: list[str]) -> dict:
    """``--model-option KEY=VALUE`` flags as ``build_model`` options; a malformed one is a
    user's mistake (ValueError naming it)."""
    from raylab.models import parse_option

    options = {}
    for item in items:
        try:
            key, value = parse_option(item)
        except ValueError as err:
            raise ValueError(f"--model-option {item}: {err}") from None
        options[key] = value
    return options
