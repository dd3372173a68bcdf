"""What every job in ``jobs/`` shares: its flags, how it starts Ray, how a mistake ends it.

Flags: a setting of a config dataclass (:class:`~raylab.data.clips.ClipConfig`,
:class:`~raylab.config.TrainConfig`, :class:`~raylab.infer.batch.InferenceResources`) is a
flag made from the field itself (:func:`add_config_flags`): its type, its default, and the
help and choices of its ``metadata``, which are that setting's one description. The parsed
flags become the dataclass again with :func:`config_from_flags`; a new field is a new flag of
every job that uses them, with no edit to the jobs.

Ray: :func:`start_ray` is the one place a job calls ``ray.init``; given a log file, it sends
Ray's own records there (:func:`route_ray_logs`), leaving the console to the job's story. A
node it starts gets :func:`ray_node_environment`'s settings.

Mistakes: a missing shard folder, an unknown model, a clip the videos cannot give
(:func:`check_clips`, before Ray starts): the job
ends with one line on stderr naming the job, the input and what to do (the error's own
message), and exit status 1, never a traceback. ``RAYLAB_TRACEBACK=1`` shows the traceback
instead, for a mistake that turns out to be raylab's.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from raylab.data.clips import ClipConfig
    from raylab.data.storage import Shards

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


# --------------------------------------------------------------------------------------------
# Flags from config dataclasses
# --------------------------------------------------------------------------------------------

# The words of a ``str | bool`` setting such as TrainConfig.amp: "auto", or on / off.
AUTO_OR_BOOL = {"auto": "auto", "true": True, "false": False}


def auto_or_bool(text: str) -> str | bool:
    """A ``str | bool`` flag's value: ``auto``, ``true`` or ``false``."""
    try:
        return AUTO_OR_BOOL[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"one of {', '.join(AUTO_OR_BOOL)}, not {text!r}"
        ) from None


def add_config_flags(
    parser: argparse.ArgumentParser,
    config: Any,
    *,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    names: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    notes: Mapping[str, str] | None = None,
    parsers: Mapping[str, Callable[[str], Any]] | None = None,
) -> dict[str, str]:
    """One flag per field of the dataclass ``config`` (a class, or an instance whose values
    are the defaults), added to ``parser`` (or an argument group); returns ``{field: flag}``.

    A field ``frames`` is the flag ``--frames`` (``names`` renames it: ``{"test_clips":
    "--val-clips"}``), parsed into ``args.frames`` by its type hint: ``int``, ``float`` and
    ``str`` as typed values, ``X | None`` the same, ``bool`` as a switch (``store_true``),
    ``tuple[float, ...]`` as one or more values, ``str | bool`` as ``auto``/``true``/``false``.
    Its help, choices and metavar come from the field's ``metadata``; ``notes`` adds a job's
    own words to a help, ``defaults`` and ``parsers`` replace a default or a type.

    Every field becomes a flag (``only``: these, in this order; ``skip``: not these) but the
    ones no flag can say (a dict, a nested dataclass, a ``tuple[str, ...]``), which are left
    out unless ``only`` names them (a ``tuple[str, ...]`` then takes words; the others raise
    TypeError).
    """
    cls = config if isinstance(config, type) else type(config)
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names, defaults = names or {}, defaults or {}
    notes, parsers = notes or {}, parsers or {}
    named = None if only is None else list(only)
    skip = set(skip)
    unknown = set(named or ()) | skip | set(names) | set(defaults) | set(notes) | set(parsers)
    unknown -= set(by_name)
    if unknown:
        raise ValueError(f"{cls.__name__} has no setting {', '.join(sorted(unknown))}")

    flags = {}
    for name in named if named is not None else list(by_name):
        if name in skip:
            continue
        field = by_name[name]
        kwargs = flag_kind(hints[name], named=named is not None)
        if kwargs is None:
            if named is not None:
                raise TypeError(f"{cls.__name__}.{name}: no flag can say a {hints[name]}")
            continue
        flag = names.get(name, "--" + name.replace("_", "-"))
        default = defaults[name] if name in defaults else field_default(config, field)
        if isinstance(default, tuple):
            default = list(default)  # as argparse gives a flag's values
        if default is True:  # a switch that is on: --no-NAME turns it off
            kwargs["action"] = argparse.BooleanOptionalAction
        for key in ("choices", "metavar"):
            if key in field.metadata:
                kwargs[key] = field.metadata[key]
        if name in parsers:
            kwargs["type"] = parsers[name]
        if "type" in kwargs and "choices" not in kwargs and "metavar" not in kwargs:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        text = "; ".join(w for w in (field.metadata.get("help"), notes.get(name)) if w)
        if not any(default is v for v in (None, False, True, dataclasses.MISSING)):
            shown = " ".join(map(str, default)) if isinstance(default, list) else default
            text = f"{text} (default: {shown})".lstrip()
        kwargs["help"] = text.replace("%", "%%")  # argparse formats help with %
        if default is dataclasses.MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        parser.add_argument(flag, dest=name, **kwargs)
        flags[name] = flag
    return flags


def field_default(config: Any, field: dataclasses.Field) -> Any:
    """A field's default: the instance's value, else the class's default (MISSING: none)."""
    if not isinstance(config, type):
        return getattr(config, field.name)
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def flag_kind(hint: Any, *, named: bool = False) -> dict | None:
    """``add_argument`` keywords for a field of type ``hint``; None when no flag says it."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if set(args) == {str, bool}:
            return {"type": auto_or_bool, "metavar": "{" + ",".join(AUTO_OR_BOOL) + "}"}
        values = [a for a in args if a is not type(None)]
        if len(values) != 1 or values[0] is bool:  # X | None: as X, default None
            return None
        hint, args = values[0], typing.get_args(values[0])
    if hint is bool:
        return {"action": "store_true"}
    if hint in (int, float, str):
        return {"type": hint}
    variadic = typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis
    if variadic and (args[0] in (int, float) or (args[0] is str and named)):
        return {"type": args[0], "nargs": "+"}
    return None


def is_tuple(hint: Any) -> bool:
    """Whether a field of type ``hint`` holds a tuple (``tuple[...]``, or one ``| None``)."""
    return tuple in map(typing.get_origin, (hint, *typing.get_args(hint)))


def config_from_flags(config: Any, args: argparse.Namespace, **overrides: Any) -> Any:
    """The dataclass the flags describe: each field of ``config`` (a class, or an instance
    whose other values are kept) that ``args`` holds, a list as a tuple, then ``overrides``."""
    cls = config if isinstance(config, type) else type(config)
    hints = typing.get_type_hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if not field.init or field.name in overrides or not hasattr(args, field.name):
            continue
        value = getattr(args, field.name)
        if isinstance(value, list) and is_tuple(hints[field.name]):
            value = tuple(value)
        values[field.name] = value
    values |= overrides
    return cls(**values) if isinstance(config, type) else dataclasses.replace(config, **values)


# --------------------------------------------------------------------------------------------
# Inference jobs' resources, and Ray
# --------------------------------------------------------------------------------------------

# The inference jobs' own defaults: half a CPU per decode task and per model actor.
INFERENCE_DEFAULTS = {"decoder_cpus": 0.5, "predictor_cpus": 0.5}


def add_inference_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``--gpu``, ``--predictors``, ``--decoder-cpus``, ``--predictor-cpus``: where an
    inference job's model actors and decode tasks run (:class:`InferenceResources`)."""
    from raylab.infer.batch import InferenceResources

    return add_config_flags(
        parser,
        InferenceResources,
        only=("use_gpu", "predictors", "decoder_cpus", "predictor_cpus"),
        names={"use_gpu": "--gpu"},
        defaults=INFERENCE_DEFAULTS,
    )


def inference_resources(args: argparse.Namespace, **overrides: Any):
    """The job's :class:`InferenceResources`: its inference flags, and any other of its
    flags that name a setting (``--batch-size``, ``--decoder-resource``)."""
    from raylab.infer.batch import InferenceResources

    return config_from_flags(InferenceResources, args, **overrides)


def check_clips(job: str, shards: Shards, clip: ClipConfig, splits: Iterable[str]) -> Shards:
    """``shards``, once clips as ``clip`` says can be cut from the ``splits`` named, before
    Ray starts: a clear error when no stored rendition is large enough; a line saying how
    many videos are shorter than a clip spans, which the sampler loops to fill it (as
    MMAction2 does), when some are."""
    clip.rendition(shards.manifest.renditions)
    for split in dict.fromkeys(splits):
        frames = shards.frame_counts(split)
        shorter = sum(n < clip.span for n in frames)
        if shorter:
            print(
                f"{job}: {shorter} of {len(frames)} {split!r} videos are shorter than a clip's "
                f"{clip.span} frames (longest {max(frames)}); each of those is looped to fill it",
                file=sys.stderr,
            )
    return shards


def print_result(result: dict) -> None:
    """Print the job's result as its last line, one line of JSON, once Ray (when this job
    started or joined it) is shut down: a message of Ray's (a lost node's, a worker's) can
    otherwise still reach the console after it."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    print(json.dumps(result, default=str), flush=True)


# Loggers of Ray's (and Optuna's) that print INFO records on a driver's console.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.tune", "ray.train", "optuna")


def native_stderr_to(log_file: Path) -> None:
    """Point this process's file descriptor 2 at ``log_file`` (appended to) and
    ``sys.stderr`` at a copy of the console's.

    Ray's core worker logs from C++ straight to descriptor 2, past Python's logging: on every
    Ray Data actor pool, for one, an error-level notice that its constructor arguments sit
    in the object store (ray-project/ray#57733), which is Ray's internals, not the user's
    story. Python's own writes (print, tracebacks, progress bars, the job's one-line errors,
    logging handlers already writing to ``sys.stderr``) still reach the console.
    """
    old = sys.stderr
    old.flush()
    console = os.dup(2)
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)
    encoding = getattr(old, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(console, "w", buffering=1, encoding=encoding, errors="backslashreplace")
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and handler.stream in (
                old,
                sys.__stderr__,
            ):
                handler.setStream(sys.stderr)


def route_ray_logs(log_file: str | Path) -> Path:
    """Send the INFO records of Ray's and Optuna's loggers in this process to ``log_file``,
    and only their warnings and errors to the console; what Ray's core worker (C++) writes
    to this process's stderr goes to the file too (:func:`native_stderr_to`). Returns the
    log file's path.

    Call it before ``ray.init(configure_logging=False)``, which then leaves these handlers
    alone. A logger's own file handlers (Ray Data's session file) keep everything.
    """
    import optuna
    import ray.data  # noqa: F401  (Ray Data sets up its loggers when imported: ours go over them)

    # Optuna adds its own stderr handler on first use; ours replace it.
    optuna.logging.disable_default_handler()
    path = Path(log_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    native_stderr_to(path)  # first: the console handler below writes to the new sys.stderr
    to_file = logging.FileHandler(path)
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    to_console = logging.StreamHandler(sys.stderr)
    to_console.setLevel(logging.WARNING)
    to_console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler or not isinstance(
                handler, logging.FileHandler
            ):
                handler.setLevel(max(handler.level, logging.WARNING))
        # Children that propagate reach both through the top loggers' handlers.
        if name in ("ray", "optuna") or not logger.propagate:
            logger.addHandler(to_file)
            if not any(h.level >= logging.WARNING for h in logger.handlers if h is not to_file):
                logger.addHandler(to_console)
    # The notice that progress bars are off is about our own setting (a search's console
    # has no room for a bar per dataset): it belongs in the file.
    notice = logging.getLogger("ray.data._internal.progress")
    notice.propagate = False
    notice.addHandler(to_file)
    return path


# Ray keeps as many idle worker processes on a node as it has CPUs and ends the ones idle
# longest first. The process that decodes a run's first clips as it starts
# (raylab.data.pipeline.decode_ahead) is idle from then on, longer than the run's decode
# processes; with two CPUs Ray ended it between a search's trials and started another for
# each, a second and more of every trial's start. One more idle process keeps it for the
# next trial. More would keep others no one takes again (the node's prestarted processes,
# an ingest's), and the raylet warns on the job's console once a node's Python processes
# reach 4x its CPUs (docs/results.md).
SPARE_IDLE_WORKERS = 1
IDLE_WORKERS_SETTING = "RAY_num_workers_soft_limit"  # read by the node's raylet


def ray_node_environment() -> None:
    """What a Ray node this process starts reads from the environment, unless it is set
    already: it keeps up to its CPUs + ``SPARE_IDLE_WORKERS`` idle worker processes
    (``RAY_num_workers_soft_limit``). A node joined, not started, keeps its own."""
    spare = (os.cpu_count() or 1) + SPARE_IDLE_WORKERS
    os.environ.setdefault(IDLE_WORKERS_SETTING, str(spare))


def start_ray(
    *,
    log_to_driver: bool = False,
    progress_bars: bool = False,
    log_file: str | Path | None = None,
    **init: Any,
) -> Path | None:
    """Start Ray, or join the cluster ``RAY_ADDRESS`` names: the one place a job calls
    ``ray.init`` (``init``: its other arguments, e.g. ``configure_logging=False``). Workers'
    output reaches this console only with ``log_to_driver``; Ray Data's progress bars are off
    unless ``progress_bars`` (they would bury the job's own lines). With ``log_file``, Ray's
    own records on this driver go there (:func:`route_ray_logs`; the console says where once)
    and its path is returned."""
    import ray

    path = None
    if log_file is not None:
        path = route_ray_logs(log_file)
        print(f"Ray's log: {path}", file=sys.stderr)
        init["configure_logging"] = False
    ray_node_environment()
    ray.init(ignore_reinit_error=True, log_to_driver=log_to_driver, **init)
    if not progress_bars:
        ray.data.DataContext.get_current().enable_progress_bars = False
    return path
