"""Annotation readers: a dataset's own list files -> one uniform list of videos.

Every reader returns :class:`Annotations`: the class names (list index = the label id
stored in the shards) and one :class:`VideoEntry` per listed video, in the order of the
list files. Readers never check that videos exist or decode: the ingest does that and
records a reason for every video it cannot use. Readers only look at the disk when the
format leaves a file's location open (Kinetics) or *is* the disk layout (folders).

Split naming, the same for every format: ``"train"``, ``"val"`` and ``"test"``.

* UCF101 ``testlistNN.txt`` and HMDB51 tag 2 become ``"val"``: they are the lists these
  datasets report accuracy on, so they play the validation role in training.
* Kinetics ``split`` values ``val``/``validate``/``validation`` become ``"val"``.
* SSv2 ``train.json`` -> ``"train"``, ``validation.json`` -> ``"val"``; ``test.json`` has
  no labels and is skipped unless ``read_ssv2(..., include_test=True)`` asks for it.

Malformed list files raise ``ValueError`` (missing ones ``FileNotFoundError``) with a
message naming the file, the line and what to do about it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FORMATS = ("ucf101", "hmdb51", "kinetics", "ssv2", "folders", "csv")

VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".avi",
        ".mkv",
        ".webm",
        ".mov",
        ".mpg",
        ".mpeg",
        ".m4v",
        ".flv",
        ".wmv",
        ".3gp",
        ".ts",
    }
)

# Values a split column may hold -> the split name used in the shards.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


@dataclass(frozen=True)
class VideoEntry:
    """One listed video.

    ``path`` is relative to the video root, with POSIX separators and the extension;
    ``label_name`` is the class as the annotations give it (it may be one that is not in
    :attr:`Annotations.classes`: the ingest then rejects it as an unknown class);
    ``split`` is ``"train"``, ``"val"`` or ``"test"``.
    """

    path: str
    label_name: str
    split: str


@dataclass(frozen=True)
class Annotations:
    """The classes (index = label id in the shards) and the entries in list-file order."""

    classes: list[str]
    entries: list[VideoEntry]


# ---------------------------------------------------------------------------- helpers


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of every non-blank line of ``path``.

    Tolerates CRLF line endings and a UTF-8 byte-order mark. ``what`` says what the file
    is, for the message when it is missing.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found; check the --annotations folder")
    text = path.read_text(encoding="utf-8-sig")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _clean_relative(raw: str, where: str) -> str:
    """``raw`` as a normalized relative POSIX path; ValueError if it leaves the root."""
    # No real dataset has backslashes in names; lists written on Windows use them as separators.
    path = posixpath.normpath(raw.strip().replace("\\", "/"))
    if path in ("", ".") or path.startswith("/") or path == ".." or path.startswith("../"):
        raise ValueError(
            f"{where}: path {raw!r} is not a file path inside the video root; "
            "list paths relative to the video root"
        )
    return path


def _split_of(value: str, where: str) -> str:
    """Map a split value (``val``, ``validate``, ...) to train/val/test, or ValueError."""
    split = _SPLIT_ALIASES.get(value.strip().lower())
    if split is None:
        raise ValueError(
            f"{where}: unknown split {value!r}; use one of train, val (or validate, "
            "validation), test"
        )
    return split


def _annotation_dir(video_root: str | Path, annotations: str | Path | None) -> Path:
    """The folder holding the list files: ``annotations`` (or its parent if it is a file)."""
    path = Path(annotations) if annotations is not None else Path(video_root)
    return path.parent if path.is_file() else path


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


# ---------------------------------------------------------------------------- UCF101


def read_ucf101(
    video_root: str | Path, annotations: str | Path | None = None, split: int = 1
) -> Annotations:
    """Read UCF101's ``classInd.txt``, ``trainlist0N.txt`` and ``testlist0N.txt``.

    ``annotations`` is the ``ucfTrainTestlist`` folder (or a file in it); it defaults to
    ``video_root``, and a ``ucfTrainTestlist`` subfolder there is found too. Classes are in
    ``classInd.txt`` order (its 1-based indices must be 1..N). Train-list entries take the
    class of their label index: the index is the annotation, the folder only the layout
    (a disagreement is logged). Test-list entries, which carry no index, take their
    folder's class (matched case-insensitively to ``classInd.txt``; a folder that matches
    no class is kept as its own label, which the ingest rejects as an unknown class).
    Train lists come first, then test lists, whose videos get split ``"val"``.
    """
    if split < 1:
        raise ValueError(f"split must be 1, 2 or 3 for ucf101, got {split}")
    folder = _annotation_dir(video_root, annotations)
    if not (folder / "classInd.txt").is_file() and (folder / "ucfTrainTestlist").is_dir():
        folder = folder / "ucfTrainTestlist"

    class_file = folder / "classInd.txt"
    by_index: dict[int, str] = {}
    for n, line in _read_lines(class_file, "UCF101 class list classInd.txt"):
        parts = line.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(
                f"{class_file} line {n}: expected '<index> <class name>', got {line!r}"
            )
        index, name = int(parts[0]), parts[1].strip()
        if index in by_index:
            raise ValueError(f"{class_file} line {n}: index {index} is listed twice")
        by_index[index] = name
    classes = [by_index[i] for i in sorted(by_index)]
    if sorted(by_index) != list(range(1, len(classes) + 1)):
        raise ValueError(
            f"{class_file}: indices must be 1..{len(classes)} with none missing, got "
            f"{sorted(by_index)}; fix the file so label ids stay those of the protocol"
        )
    if len(set(classes)) != len(classes):
        raise ValueError(f"{class_file}: a class name is listed twice")
    folded = {c.lower(): c for c in classes}

    def folder_class(path: str) -> str:
        top = path.split("/", 1)[0] if "/" in path else ""
        return folded.get(top.lower(), top)

    def index_class(index_text: str, where: str, line: str) -> str:
        if not index_text.isdigit() or not 1 <= int(index_text) <= len(classes):
            raise ValueError(
                f"{where}: expected '<path> <label index 1..{len(classes)}>', got {line!r}"
            )
        return classes[int(index_text) - 1]

    entries: list[VideoEntry] = []
    train_file = folder / f"trainlist{split:02d}.txt"
    for n, line in _read_lines(train_file, f"UCF101 train list for split {split}"):
        where = f"{train_file} line {n}"
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(f"{where}: expected '<path> <label index>', got {line!r}")
        path = _clean_relative(parts[0], where)
        label = index_class(parts[1], where, line)
        if folder_class(path) != label:
            logger.warning("%s: %s is in folder of another class; using %s", where, path, label)
        entries.append(VideoEntry(path, label, "train"))

    test_file = folder / f"testlist{split:02d}.txt"
    for n, line in _read_lines(test_file, f"UCF101 test list for split {split}"):
        where = f"{test_file} line {n}"
        parts = line.rsplit(None, 1)
        # The official test lists hold only paths; tolerate lists that add the index.
        if len(parts) == 2 and parts[1].isdigit():
            path = _clean_relative(parts[0], where)
            label = index_class(parts[1], where, line)
        else:
            path = _clean_relative(line, where)
            label = folder_class(path)
        entries.append(VideoEntry(path, label, "val"))
    return Annotations(classes, entries)


# ---------------------------------------------------------------------------- HMDB51

_HMDB_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>\d+)\.txt$")


def read_hmdb51(
    video_root: str | Path, annotations: str | Path | None = None, split: int = 1
) -> Annotations:
    """Read HMDB51's ``<class>_test_split<N>.txt`` files.

    ``annotations`` is the folder of split files (``testTrainMulti_7030_splits``, also
    found as a subfolder of the default, ``video_root``). Each line is ``<video> <tag>``:
    tag 1 -> ``"train"``, 2 -> ``"val"`` (the protocol's test set), 0 -> unused, skipped.
    Videos are at ``<class>/<video>``. Classes are sorted alphabetically; entries follow
    the sorted classes, each in its file's line order.
    """
    if split < 1:
        raise ValueError(f"split must be 1, 2 or 3 for hmdb51, got {split}")
    folder = _annotation_dir(video_root, annotations)

    def split_files(where: Path) -> dict[str, Path]:
        found = {}
        if where.is_dir():
            for f in where.iterdir():
                m = _HMDB_SPLIT_FILE.match(f.name)
                if m and int(m["n"]) == split and f.is_file():
                    found[m["cls"]] = f
        return found

    files = split_files(folder)
    if not files and (folder / "testTrainMulti_7030_splits").is_dir():
        folder = folder / "testTrainMulti_7030_splits"
        files = split_files(folder)
    if not files:
        raise FileNotFoundError(
            f"{folder}: no HMDB51 split files '<class>_test_split{split}.txt'; pass the "
            "folder of the extracted test_train_splits archive as --annotations"
        )

    classes = sorted(files)
    entries: list[VideoEntry] = []
    tags = {"1": "train", "2": "val"}
    for cls in classes:
        path = files[cls]
        for n, line in _read_lines(path, "HMDB51 split file"):
            where = f"{path} line {n}"
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{where}: expected '<video name> <tag 0, 1 or 2>', got {line!r}")
            if parts[1] == "0":  # not used by this split
                continue
            video = _clean_relative(parts[0], where)
            entries.append(VideoEntry(f"{cls}/{video}", cls, tags[parts[1]]))
    return Annotations(classes, entries)


# ---------------------------------------------------------------------------- Kinetics


def _stem_index(root: Path) -> dict[str, list[str]]:
    """File stem -> relative POSIX paths of every non-hidden file under ``root``."""
    index: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            index.setdefault(os.path.splitext(name)[0], []).append(rel)
    return index


def _kinetics_csvs(video_root: Path, annotations: str | Path | None) -> list[Path]:
    path = Path(annotations) if annotations is not None else video_root
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: Kinetics annotations not found; pass a CSV or a folder")
    rank = {"train": 0, "val": 1, "test": 2}
    found = [f for f in path.glob("*.csv") if f.is_file()]
    if not found:
        raise FileNotFoundError(
            f"{path}: no *.csv Kinetics annotation file here; pass the CSV file or its "
            "folder as --annotations"
        )

    def order(f: Path) -> tuple[int, str]:
        words = re.split(r"[^a-z]+", f.stem.lower())
        split = next((_SPLIT_ALIASES[w] for w in words if w in _SPLIT_ALIASES), None)
        return rank.get(split or "", 3), f.name

    return sorted(found, key=order)


def _seconds(text: str, where: str, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise ValueError(f"{where}: {column} must be whole seconds, got {text!r}")
    return int(value)


def read_kinetics(video_root: str | Path, annotations: str | Path | None = None) -> Annotations:
    """Read Kinetics CSVs (``label,youtube_id,time_start,time_end,split`` + any extra columns).

    ``annotations`` is a CSV file or a folder whose every ``*.csv`` is read (train files
    first, then val, then test); it defaults to ``video_root``. A file without a ``split``
    column takes its split from its name (``validate.csv`` -> ``"val"``). Rows without a
    label (test sets) are skipped and counted in a warning. Videos are named
    ``{youtube_id}_{time_start:06d}_{time_end:06d}.<ext>`` and may lie flat or in any
    subfolders (``<split>/<label>/``, ``<label>/``): ``video_root`` is walked once and the
    file found by name, preferring a video extension, then one under a folder named after
    the row's split. A video not found gets the flat ``.mp4`` path, which the ingest
    rejects as missing. Classes are sorted alphabetically.
    """
    root = Path(video_root)
    rows: list[tuple[str, str, str]] = []  # (stem, label, split)
    unlabeled = 0
    for path in _kinetics_csvs(root, annotations):
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            reader.fieldnames = header
            missing = {"youtube_id", "time_start", "time_end"} - set(header)
            if missing:
                raise ValueError(
                    f"{path} line 1: header {','.join(header)!r} lacks {sorted(missing)}; "
                    "expected 'label,youtube_id,time_start,time_end,split'"
                )
            file_split = None
            if "split" not in header:
                words = re.split(r"[^a-z]+", path.stem.lower())
                file_split = next((_SPLIT_ALIASES[w] for w in words if w in _SPLIT_ALIASES), None)
                if file_split is None:
                    raise ValueError(
                        f"{path} line 1: no 'split' column and the file name names no split; "
                        "add a split column or name the file train.csv/validate.csv/test.csv"
                    )
            for row in reader:
                where = f"{path} line {reader.line_num}"
                if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                    continue  # blank line
                if None in row:
                    raise ValueError(f"{where}: more fields than the header has columns")
                youtube_id = (row["youtube_id"] or "").strip()
                if not youtube_id:
                    raise ValueError(f"{where}: empty youtube_id")
                start = _seconds((row["time_start"] or "").strip(), where, "time_start")
                end = _seconds((row["time_end"] or "").strip(), where, "time_end")
                label = (row.get("label") or "").strip()
                if not label:
                    unlabeled += 1
                    continue
                split = file_split or _split_of(row["split"] or "", where)
                rows.append((f"{youtube_id}_{start:06d}_{end:06d}", label, split))
    if unlabeled:
        logger.warning("kinetics: skipped %d rows without a label (unlabeled test set)", unlabeled)

    index = _stem_index(root) if rows and root.is_dir() else {}

    def locate(stem: str, split: str) -> str:
        candidates = index.get(stem)
        if not candidates:
            return f"{stem}.mp4"

        def preference(rel: str) -> tuple[bool, bool, int, str]:
            top = rel.split("/", 1)[0].lower() if "/" in rel else ""
            not_video = os.path.splitext(rel)[1].lower() not in VIDEO_EXTENSIONS
            other_split = _SPLIT_ALIASES.get(top, split) != split
            return not_video, other_split, rel.count("/"), rel

        return min(candidates, key=preference)

    entries = [VideoEntry(locate(stem, split), label, split) for stem, label, split in rows]
    return Annotations(sorted({label for _, label, _ in rows}), entries)


# ---------------------------------------------------------------------------- SSv2


def _ssv2_file(folders: Iterable[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (f"{name}.json", f"something-something-v2-{name}.json"):
            if (folder / candidate).is_file():
                return folder / candidate
    return None


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} line {e.lineno}: not valid JSON ({e.msg}); re-download or repair the file"
        ) from e


def read_ssv2(
    video_root: str | Path,
    annotations: str | Path | None = None,
    *,
    include_test: bool = False,
) -> Annotations:
    """Read Something-Something v2's ``labels.json``, ``train.json`` and ``validation.json``.

    The files may also carry the ``something-something-v2-`` prefix of the download and
    lie in a ``labels/`` subfolder of ``annotations`` (default ``video_root``). Classes are
    ordered by their ``labels.json`` index. An entry's class is its ``template`` without
    the square brackets; its video is ``{id}.webm``. ``test.json`` has no labels, so it is
    skipped unless ``include_test``, which lists its videos with ``label_name ""`` and split
    ``"test"`` (the ingest then rejects them as an unknown class).
    """
    base = _annotation_dir(video_root, annotations)
    folders = (base, base / "labels")
    labels_path = _ssv2_file(folders, "labels")
    if labels_path is None:
        raise FileNotFoundError(
            f"{base}: SSv2 labels.json (or something-something-v2-labels.json) not found; "
            "pass the folder of the annotation files as --annotations"
        )
    mapping = _load_json(labels_path)
    if not isinstance(mapping, dict):
        raise ValueError(f"{labels_path}: expected an object {{class name: index}}")
    by_index: dict[int, str] = {}
    for name, index in mapping.items():
        if not str(index).strip().isdigit() or int(index) in by_index:
            raise ValueError(
                f"{labels_path}: class {name!r} has index {index!r}; indices must be "
                "distinct whole numbers 0..N-1"
            )
        by_index[int(index)] = name
    if sorted(by_index) != list(range(len(by_index))):
        raise ValueError(f"{labels_path}: indices must be 0..{len(by_index) - 1}, none missing")
    classes = [by_index[i] for i in range(len(by_index))]

    entries: list[VideoEntry] = []
    parts = [("train", "train"), ("validation", "val")]
    if include_test:
        parts.append(("test", "test"))
    for name, split in parts:
        path = _ssv2_file(folders, name)
        if path is None:
            raise FileNotFoundError(
                f"{base}: SSv2 {name}.json (or something-something-v2-{name}.json) not found"
            )
        items = _load_json(path)
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a list of videos")
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not str(item.get("id", "")).strip():
                raise ValueError(f"{path}: item {i} has no 'id': {item!r}")
            video_id = str(item["id"]).strip()
            if split == "test":
                label = ""
            elif not isinstance(item.get("template"), str):
                raise ValueError(f"{path}: item {i} (id {video_id}) has no 'template'")
            else:
                label = item["template"].replace("[", "").replace("]", "")
            entries.append(VideoEntry(f"{video_id}.webm", label, split))
    return Annotations(classes, entries)


# ---------------------------------------------------------------------------- folders


def read_folders(video_root: str | Path) -> Annotations:
    """List ``video_root/<class>/...`` (or ``video_root/<split>/<class>/...``).

    If ``video_root`` has a ``train/`` folder and a ``val/`` or ``test/`` one, each of
    those is a split holding class folders; otherwise everything is ``"train"``. Every
    non-hidden file under a class folder (at any depth) is listed, video extension or not,
    so that a stray file is rejected with a reason by the ingest instead of silently
    dropped. Files outside any class folder (a README next to them) are not videos of any
    class: they are skipped with a warning. Classes are sorted alphabetically; entries go
    split by split, class by class, in sorted path order.
    """
    root = Path(video_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: video root is not a folder")

    def subdirs(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))

    def loose_files(folder: Path) -> list[str]:
        return [p.name for p in folder.iterdir() if p.is_file() and not _is_hidden(p.name)]

    top = {p.name for p in subdirs(root)}
    if "train" in top and ({"val", "test"} & top):
        split_dirs = [(root / s, s) for s in ("train", "val", "test") if s in top]
        ignored = sorted(top - {"train", "val", "test"})
        if ignored:
            logger.warning(
                "folders: %s: ignoring folders outside train/val/test: %s", root, ignored
            )
    else:
        split_dirs = [(root, "train")]

    classes: set[str] = set()
    entries: list[VideoEntry] = []
    for split_dir, split in split_dirs:
        if loose := loose_files(split_dir):
            logger.warning(
                "folders: %s: skipping files outside class folders: %s", split_dir, loose
            )
        for class_dir in subdirs(split_dir):
            classes.add(class_dir.name)
            index = _stem_index(class_dir)
            for rel in sorted(r for rels in index.values() for r in rels):
                path = (class_dir / rel).relative_to(root).as_posix()
                entries.append(VideoEntry(path, class_dir.name, split))
    return Annotations(sorted(classes), entries)


# ---------------------------------------------------------------------------- csv


def _csv_file(video_root: Path, annotations: str | Path | None) -> Path:
    path = Path(annotations) if annotations is not None else video_root
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: CSV annotation file not found")
    found = sorted(f.name for f in path.glob("*.csv") if f.is_file())
    if len(found) != 1:
        raise (FileNotFoundError if not found else ValueError)(
            f"{path}: expected one *.csv list here, found {found or 'none'}; pass the file "
            "as --annotations"
        )
    return path / found[0]


def _inside_root(raw: str, root: Path, where: str) -> str:
    """A listed path as a relative POSIX path under ``root``; ValueError if outside it."""
    if not Path(raw).is_absolute():
        return _clean_relative(raw, where)
    absolute = Path(os.path.normpath(raw))
    # Compare as written first, then with symlinks resolved (the root may be a link).
    for base, target in (
        (Path(os.path.abspath(root)), absolute),
        (root.resolve(), absolute.resolve()),
    ):
        if target.is_relative_to(base) and target != base:
            return target.relative_to(base).as_posix()
    raise ValueError(
        f"{where}: {raw} is outside the video root {root}; list paths relative to the "
        "video root or move the videos under it"
    )


def read_csv(video_root: str | Path, annotations: str | Path | None = None) -> Annotations:
    """Read a ``path,label[,split]`` CSV with an optional ``path,label[,split]`` header.

    ``annotations`` is the CSV, or a folder holding exactly one ``*.csv`` (default
    ``video_root``). Paths are relative to ``video_root``; absolute paths inside it are
    made relative, others raise ValueError. Split defaults to ``"train"``. Classes are the
    distinct labels, sorted alphabetically.
    """
    root = Path(video_root)
    path = _csv_file(root, annotations)
    entries: list[VideoEntry] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        first = True
        for row in reader:
            cells = [c.strip() for c in row]
            if not any(cells):
                continue
            where = f"{path} line {reader.line_num}"
            if first and [c.lower() for c in cells] in (
                ["path", "label"],
                ["path", "label", "split"],
            ):
                first = False
                continue
            first = False
            if len(cells) not in (2, 3) or not cells[0] or not cells[1]:
                raise ValueError(
                    f"{where}: expected '<path>,<label>[,<split>]', got {','.join(row)!r}; "
                    "quote fields that contain commas"
                )
            split = _split_of(cells[2], where) if len(cells) == 3 and cells[2] else "train"
            entries.append(VideoEntry(_inside_root(cells[0], root, where), cells[1], split))
    return Annotations(sorted({e.label_name for e in entries}), entries)


# ---------------------------------------------------------------------------- dispatch


def read_annotations(
    fmt: str,
    video_root: str | Path,
    annotations: str | Path | None = None,
    split: int = 1,
) -> Annotations:
    """Read the annotations of ``fmt`` (one of :data:`FORMATS`).

    ``annotations`` (a file or folder) defaults to ``video_root``; ``split`` selects the
    UCF101/HMDB51 split files N and is ignored by the other formats.
    """
    if fmt == "ucf101":
        return read_ucf101(video_root, annotations, split)
    if fmt == "hmdb51":
        return read_hmdb51(video_root, annotations, split)
    if fmt == "kinetics":
        return read_kinetics(video_root, annotations)
    if fmt == "ssv2":
        return read_ssv2(video_root, annotations)
    if fmt == "folders":
        return read_folders(video_root)
    if fmt == "csv":
        return read_csv(video_root, annotations)
    raise ValueError(f"unknown annotation format {fmt!r}; use one of {', '.join(FORMATS)}")
