"""Annotation readers against small copies of each dataset's real list-file layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from raylab.data.annotations import (
    FORMATS,
    Annotations,
    VideoEntry,
    read_annotations,
    read_ssv2,
)


def _write(path: Path, text: str, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def _touch(root: Path, *paths: str) -> None:
    for p in paths:
        _write(root / p, "x")


def _triples(anns: Annotations) -> list[tuple[str, str, str]]:
    return [(e.path, e.label_name, e.split) for e in anns.entries]


# ---------------------------------------------------------------------------- UCF101


def _ucf101(root: Path) -> Path:
    lists = root / "ucfTrainTestlist"
    # The official files use CRLF line endings.
    _write(
        lists / "classInd.txt",
        "1 ApplyEyeMakeup\n2 Archery\n3 HandstandPushups\n\n",
        newline="\r\n",
    )
    _write(
        lists / "trainlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
        "Archery/v_Archery_g08_c02.avi 2\n"
        "\n"
        "HandstandPushups/v_HandStandPushups_g08_c01.avi 3\n"
        # Index and folder disagree: the index wins.
        "Archery/v_Archery_g09_c01.avi 1\n",
        newline="\r\n",
    )
    _write(
        lists / "testlist01.txt",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
        "handstandpushups/v_HandStandPushups_g01_c01.avi\n"
        "Juggling/v_Juggling_g01_c01.avi\n",
        newline="\r\n",
    )
    _write(lists / "trainlist02.txt", "Archery/v_Archery_g01_c01.avi 2\n")
    _write(lists / "testlist02.txt", "Archery/v_Archery_g08_c01.avi\n")
    return lists


def test_ucf101_split1(tmp_path):
    _ucf101(tmp_path)  # lists found in the ucfTrainTestlist folder under the video root
    anns = read_annotations("ucf101", tmp_path)
    assert anns.classes == ["ApplyEyeMakeup", "Archery", "HandstandPushups"]
    assert _triples(anns) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "ApplyEyeMakeup", "train"),
        ("Archery/v_Archery_g08_c02.avi", "Archery", "train"),
        ("HandstandPushups/v_HandStandPushups_g08_c01.avi", "HandstandPushups", "train"),
        ("Archery/v_Archery_g09_c01.avi", "ApplyEyeMakeup", "train"),
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "ApplyEyeMakeup", "val"),
        ("handstandpushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups", "val"),
        ("Juggling/v_Juggling_g01_c01.avi", "Juggling", "val"),  # not a class: ingest rejects
    ]


def test_ucf101_split2_with_explicit_annotations(tmp_path):
    lists = _ucf101(tmp_path / "meta")
    anns = read_annotations("ucf101", tmp_path / "UCF-101", lists, split=2)
    assert _triples(anns) == [
        ("Archery/v_Archery_g01_c01.avi", "Archery", "train"),
        ("Archery/v_Archery_g08_c01.avi", "Archery", "val"),
    ]


def test_ucf101_malformed_train_line_names_file_and_line(tmp_path):
    lists = _ucf101(tmp_path)
    lines = [f"Archery/v_Archery_g0{i}_c01.avi 2" for i in range(1, 7)] + ["foo"]
    _write(lists / "trainlist01.txt", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"trainlist01\.txt line 7: expected '<path> <label"):
        read_annotations("ucf101", tmp_path)


def test_ucf101_label_index_out_of_range(tmp_path):
    lists = _ucf101(tmp_path)
    _write(lists / "trainlist01.txt", "\nArchery/v_Archery_g01_c01.avi 4\n")
    with pytest.raises(ValueError, match=r"trainlist01\.txt line 2: .*label index 1\.\.3"):
        read_annotations("ucf101", tmp_path)


def test_ucf101_class_index_gap(tmp_path):
    lists = _ucf101(tmp_path)
    _write(lists / "classInd.txt", "1 A\n3 B\n")
    with pytest.raises(ValueError, match=r"classInd\.txt: indices must be 1\.\.2"):
        read_annotations("ucf101", tmp_path)


def test_ucf101_missing_split_file(tmp_path):
    _ucf101(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"trainlist03\.txt: UCF101 train list"):
        read_annotations("ucf101", tmp_path, split=3)


# ---------------------------------------------------------------------------- HMDB51


def _hmdb51(folder: Path) -> None:
    # Real lines end with a space after the tag.
    _write(
        folder / "brush_hair_test_split1.txt",
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "April_09_brush_hair_u_nm_np1_ba_goo_1.avi 2 \n"
        "Aussie_Brunette_Brushing_Hair_II_brush_hair_u_nm_np4_ri_med_3.avi 0 \n",
        newline="\r\n",
    )
    _write(
        folder / "fall_floor_test_split1.txt",
        "\nTheBoondockSaints_fall_floor_f_cm_np1_ba_bad_7.avi 2 \n"
        "TrumanShow_fall_floor_f_nm_np1_le_med_6.avi 1 \n",
    )
    _write(folder / "fall_floor_test_split2.txt", "TrumanShow_fall_floor_f_nm_np1_le_med_6.avi 2\n")
    _write(folder / "brush_hair_test_split2.txt", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 0\n")


def test_hmdb51_split1(tmp_path):
    _hmdb51(tmp_path / "testTrainMulti_7030_splits")
    anns = read_annotations("hmdb51", tmp_path)
    assert anns.classes == ["brush_hair", "fall_floor"]
    assert _triples(anns) == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair", "train"),
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", "brush_hair", "val"),
        ("fall_floor/TheBoondockSaints_fall_floor_f_cm_np1_ba_bad_7.avi", "fall_floor", "val"),
        ("fall_floor/TrumanShow_fall_floor_f_nm_np1_le_med_6.avi", "fall_floor", "train"),
    ]


def test_hmdb51_split2(tmp_path):
    _hmdb51(tmp_path / "splits")
    anns = read_annotations("hmdb51", tmp_path / "videos", tmp_path / "splits", split=2)
    assert anns.classes == ["brush_hair", "fall_floor"]
    assert _triples(anns) == [
        ("fall_floor/TrumanShow_fall_floor_f_nm_np1_le_med_6.avi", "fall_floor", "val"),
    ]


def test_hmdb51_bad_tag_and_missing_split(tmp_path):
    _write(tmp_path / "run_test_split1.txt", "a.avi 1\nb.avi 3\n")
    with pytest.raises(
        ValueError, match=r"run_test_split1\.txt line 2: expected '<video name> <tag"
    ):
        read_annotations("hmdb51", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"_test_split3\.txt"):
        read_annotations("hmdb51", tmp_path, split=3)


# ---------------------------------------------------------------------------- Kinetics

KINETICS_TRAIN = (
    "label,youtube_id,time_start,time_end,split,is_cc\n"
    "abseiling,--07WQ2iBlw,1,11,train,0\n"
    '"passing American football (in game)",-_1Dc6Jpv5w,14,24,train,0\n'
    '"cooking egg, fried",a-B_c1,0,10,train,1\n'
    "\n"
    "air drumming,zzz_missing,30,40,train,0\n"
)
KINETICS_VALIDATE = "label,youtube_id,time_start,time_end,split\nabseiling,dup_id,5,15,validate\n"
KINETICS_TEST = "youtube_id,time_start,time_end,split\nt3st_id,0,10,test\n"


def test_kinetics_folder_of_csvs_locates_files(tmp_path, caplog):
    ann = tmp_path / "annotations"
    _write(ann / "train.csv", KINETICS_TRAIN)
    _write(ann / "validate.csv", KINETICS_VALIDATE)
    _write(ann / "test.csv", KINETICS_TEST)
    videos = tmp_path / "videos"
    _touch(
        videos,
        "train/abseiling/--07WQ2iBlw_000001_000011.mp4",
        "passing American football (in game)/-_1Dc6Jpv5w_000014_000024.webm",
        "a-B_c1_000000_000010.mkv",
        "a-B_c1_000000_000010.mkv.part",  # a download left behind: not the video
        # The same clip under two splits: the one under the row's split wins.
        "train/abseiling/dup_id_000005_000015.mp4",
        "val/abseiling/dup_id_000005_000015.mp4",
        ".hidden/zzz_missing_000030_000040.mp4",
    )
    with caplog.at_level(logging.WARNING, logger="raylab.data.annotations"):
        anns = read_annotations("kinetics", videos, ann)
    assert anns.classes == [
        "abseiling",
        "air drumming",
        "cooking egg, fried",
        "passing American football (in game)",
    ]
    assert _triples(anns) == [
        ("train/abseiling/--07WQ2iBlw_000001_000011.mp4", "abseiling", "train"),
        (
            "passing American football (in game)/-_1Dc6Jpv5w_000014_000024.webm",
            "passing American football (in game)",
            "train",
        ),
        ("a-B_c1_000000_000010.mkv", "cooking egg, fried", "train"),
        ("zzz_missing_000030_000040.mp4", "air drumming", "train"),  # not found: flat .mp4
        ("val/abseiling/dup_id_000005_000015.mp4", "abseiling", "val"),
    ]
    assert "skipped 1 rows without a label" in caplog.text


def test_kinetics_single_file_split_from_name(tmp_path):
    csv_file = _write(
        tmp_path / "kinetics_val.csv", "youtube_id,label,time_start,time_end\nabc,yoga,3.0,13\n"
    )
    anns = read_annotations("kinetics", tmp_path / "videos", csv_file)
    assert anns == Annotations(["yoga"], [VideoEntry("abc_000003_000013.mp4", "yoga", "val")])


def test_kinetics_errors_name_file_and_line(tmp_path):
    bad_header = _write(tmp_path / "a" / "train.csv", "label,id,start,end,split\n")
    with pytest.raises(ValueError, match=r"train\.csv line 1: header .* lacks"):
        read_annotations("kinetics", tmp_path, bad_header)
    bad_time = _write(
        tmp_path / "b" / "train.csv",
        "label,youtube_id,time_start,time_end,split\nyoga,a,1,11,train\nyoga,b,x,11,train\n",
    )
    with pytest.raises(ValueError, match=r"train\.csv line 3: time_start must be whole seconds"):
        read_annotations("kinetics", tmp_path, bad_time)
    bad_split = _write(
        tmp_path / "c" / "all.csv",
        "label,youtube_id,time_start,time_end,split\nyoga,a,1,11,holdout\n",
    )
    with pytest.raises(ValueError, match=r"all\.csv line 2: unknown split 'holdout'"):
        read_annotations("kinetics", tmp_path, bad_split)
    with pytest.raises(FileNotFoundError, match=r"no \*\.csv"):
        read_annotations("kinetics", tmp_path)  # holds folders of CSVs, but no CSV


# ---------------------------------------------------------------------------- SSv2


def _ssv2(folder: Path, prefix: str = "") -> None:
    labels = {
        "Holding something next to something": "1",
        "Approaching something with your camera": "0",
        "Putting something, something and something on the table": "2",
    }
    train = [
        {
            "id": "78687",
            "label": "holding potato next to vicks vaporub bottle",
            "template": "Holding [something] next to [something]",
            "placeholders": ["potato", "vicks vaporub bottle"],
        },
        {
            "id": "42326",
            "label": "putting a cup, a pen and a key on the table",
            "template": "Putting [something], [something] and [something] on the table",
            "placeholders": ["a cup", "a pen", "a key"],
        },
    ]
    validation = [
        {
            "id": "74225",
            "label": "approaching bottle with your camera",
            "template": "Approaching [something] with your camera",
            "placeholders": ["bottle"],
        }
    ]
    test = [{"id": "1420"}]
    for name, data in (
        ("labels", labels),
        ("train", train),
        ("validation", validation),
        ("test", test),
    ):
        _write(folder / f"{prefix}{name}.json", json.dumps(data, indent=4))


def test_ssv2(tmp_path):
    _ssv2(tmp_path)
    anns = read_annotations("ssv2", tmp_path)
    assert anns.classes == [
        "Approaching something with your camera",
        "Holding something next to something",
        "Putting something, something and something on the table",
    ]
    assert _triples(anns) == [
        ("78687.webm", "Holding something next to something", "train"),
        ("42326.webm", "Putting something, something and something on the table", "train"),
        ("74225.webm", "Approaching something with your camera", "val"),
    ]


def test_ssv2_download_names_in_labels_folder_and_test(tmp_path):
    _ssv2(tmp_path / "labels", prefix="something-something-v2-")
    anns = read_ssv2(tmp_path / "videos", tmp_path, include_test=True)
    assert len(anns.classes) == 3
    assert [e.split for e in anns.entries] == ["train", "train", "val", "test"]
    assert anns.entries[-1] == VideoEntry("1420.webm", "", "test")


def test_ssv2_bad_json_names_line(tmp_path):
    _ssv2(tmp_path)
    _write(tmp_path / "validation.json", '[\n  {"id": "1",\n  "template": }\n]\n')
    with pytest.raises(ValueError, match=r"validation\.json line 3: not valid JSON"):
        read_annotations("ssv2", tmp_path)


# ---------------------------------------------------------------------------- folders


def test_folders_flat_lists_every_file(tmp_path, caplog):
    _touch(
        tmp_path,
        "walk/b.mp4",
        "walk/a.avi",
        "walk/notes.txt",  # listed: the ingest rejects it with a reason
        "walk/.DS_Store",  # hidden: not listed
        "run/day1/c.webm",
        "README.md",  # outside any class folder
    )
    (tmp_path / "empty_class").mkdir()
    with caplog.at_level(logging.WARNING, logger="raylab.data.annotations"):
        anns = read_annotations("folders", tmp_path)
    assert anns.classes == ["empty_class", "run", "walk"]
    assert _triples(anns) == [
        ("run/day1/c.webm", "run", "train"),
        ("walk/a.avi", "walk", "train"),
        ("walk/b.mp4", "walk", "train"),
        ("walk/notes.txt", "walk", "train"),
    ]
    assert "README.md" in caplog.text


def test_folders_with_splits(tmp_path):
    _touch(tmp_path, "train/run/1.mp4", "train/walk/2.mp4", "val/walk/3.mp4", "test/jump/4.mkv")
    anns = read_annotations("folders", tmp_path)
    assert anns.classes == ["jump", "run", "walk"]
    assert _triples(anns) == [
        ("train/run/1.mp4", "run", "train"),
        ("train/walk/2.mp4", "walk", "train"),
        ("val/walk/3.mp4", "walk", "val"),
        ("test/jump/4.mkv", "jump", "test"),
    ]


# ---------------------------------------------------------------------------- csv


def test_csv_with_header_and_absolute_path(tmp_path):
    root = tmp_path / "videos"
    _write(
        root / "list.csv",
        "path,label,split\n"
        "a/1.mp4,walk,train\n"
        "\n"
        f"{root}/b/2.mp4,run,val\n"
        '"c/3, take 2.mp4","jump, high",test\n'
        "d\\4.avi,walk,\n",
        newline="\r\n",
    )
    anns = read_annotations("csv", root)  # the one CSV in the video root
    assert anns.classes == ["jump, high", "run", "walk"]
    assert _triples(anns) == [
        ("a/1.mp4", "walk", "train"),
        ("b/2.mp4", "run", "val"),
        ("c/3, take 2.mp4", "jump, high", "test"),
        ("d/4.avi", "walk", "train"),
    ]


def test_csv_without_header(tmp_path):
    f = _write(tmp_path / "x.csv", "v/1.mp4,b\nv/2.mp4,a\n")
    anns = read_annotations("csv", tmp_path / "videos", f)
    assert anns == Annotations(
        ["a", "b"], [VideoEntry("v/1.mp4", "b", "train"), VideoEntry("v/2.mp4", "a", "train")]
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/elsewhere/1.mp4,walk", r"line 3: /elsewhere/1\.mp4 is outside the video root"),
        ("../1.mp4,walk", r"line 3: path '\.\./1\.mp4' is not a file path inside"),
        ("only_a_path.mp4", r"line 3: expected '<path>,<label>\[,<split>\]'"),
        ("a.mp4,walk,train,extra", r"line 3: expected"),
        ("a.mp4,walk,holdout", r"line 3: unknown split 'holdout'"),
    ],
)
def test_csv_errors_name_file_and_line(tmp_path, line, message):
    f = _write(tmp_path / "list.csv", f"path,label\nok.mp4,walk\n{line}\n")
    with pytest.raises(ValueError, match=r"list\.csv " + message):
        read_annotations("csv", tmp_path / "videos", f)


def test_csv_folder_with_several_lists_is_ambiguous(tmp_path):
    _write(tmp_path / "a.csv", "x.mp4,y\n")
    _write(tmp_path / "b.csv", "x.mp4,y\n")
    with pytest.raises(
        ValueError, match=r"expected one \*\.csv list here, found \['a.csv', 'b.csv'\]"
    ):
        read_annotations("csv", tmp_path)


# ---------------------------------------------------------------------------- dispatch


def test_unknown_format_lists_formats(tmp_path):
    with pytest.raises(ValueError, match="unknown annotation format 'ava'") as e:
        read_annotations("ava", tmp_path)
    assert all(f in str(e.value) for f in FORMATS)
