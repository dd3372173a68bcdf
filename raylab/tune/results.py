"""Where an experiment's results are kept on this machine, and sending them to a URI.

With a local ``storage_path`` an experiment is one folder and nothing is copied. With a URI
(s3://...) its Optuna study and options stay on this machine
(:func:`raylab.tune.options.options_dir`); the
summary and report are written there, beside a copy of Tune's trial folders
(:func:`local_experiment`), and then uploaded (:func:`upload_outputs`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from raylab.tune.options import TuneOptions


def local_dir(options: TuneOptions) -> Path:
    """Where the summary and report are written on this machine: the experiment folder, or
    the study's folder when results go to a URI."""
    return Path(options.experiment_dir) if options.local else options.study_path.parent


def local_experiment(options: TuneOptions) -> Path:
    """The experiment folder on this machine. For results on a URI (s3://...), a copy of
    Tune's trial folders (results, not checkpoints) beside the study, where the summary and
    the report are written before :func:`upload_outputs` sends them back."""
    local = local_dir(options)
    if options.local:
        return local
    import pyarrow.fs

    from raylab.data.storage import storage

    fs, root = storage(options.experiment_dir)
    root = root.rstrip("/")
    for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True)):
        relative = info.path[len(root) :].lstrip("/")
        if info.type != pyarrow.fs.FileType.File or relative.startswith("train_runs/"):
            continue
        target = local / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(info.path) as f:
            target.write_bytes(f.read())
    return local


OUTPUTS = ("best", "trials.json", "summary.json", "report.html")


def upload_outputs(options: TuneOptions, local: Path) -> None:
    """Copy the summary, report and best/ folder written in ``local`` to a URI experiment."""
    if options.local:
        return
    import pyarrow.fs

    from raylab.data.storage import storage

    fs, root = storage(options.experiment_dir)
    for name in OUTPUTS:
        source = local / name
        if source.is_dir():
            fs.create_dir(f"{root}/{name}", recursive=True)  # a no-op on object stores
            pyarrow.fs.copy_files(str(source), f"{root}/{name}", pyarrow.fs.LocalFileSystem(), fs)
        elif source.exists():
            with fs.open_output_stream(f"{root}/{name}") as f:
                f.write(source.read_bytes())
