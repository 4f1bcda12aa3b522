"""Annotation formats and class-name files, each on a small real file."""
import json

import pytest

from ila.data.annotations import (ANNOTATION_FORMATS, Sample, detect_format, load_annotations, load_class_names,
                                  read_annotations)
from ila.errors import UserError


def write(path, text):
    path.write_text(text)
    return str(path)


def test_kinetics_list_space_and_comma_separated(tmp_path):
    spaces = write(tmp_path / "train.txt", "a/x.mp4 3\n\n# comment\nb/y.mp4 0\n")
    commas = write(tmp_path / "train.csv", "a/x.mp4,3\nb/y.mp4, 0\n")
    for path in (spaces, commas):
        assert detect_format(path) == "list"
        assert load_annotations(path) == [Sample("a/x.mp4", 3), Sample("b/y.mp4", 0)]
    assert load_annotations(spaces, root="/data/k400")[0].path == "/data/k400/a/x.mp4"


def test_list_with_label_names_and_spaces(tmp_path):
    path = write(tmp_path / "val.txt", "path,label\nclips/air drumming 1.mp4 air drumming\nclips/b.mp4 abseiling\n")
    result = read_annotations(path)
    assert result.class_names == ["abseiling", "air drumming"]          # sorted from the annotation
    assert result.samples == [Sample("clips/air drumming 1.mp4", 1), Sample("clips/b.mp4", 0)]
    names = write(tmp_path / "classes.txt", "air drumming\nabseiling\n")
    assert [s.label for s in load_annotations(path, class_names=names)] == [0, 1]


def test_kinetics_csv_with_file_name_pattern(tmp_path):
    path = write(tmp_path / "validate.csv",
                 "label,youtube_id,time_start,time_end,split\n"
                 "abseiling,0wR5jVB-WPk,417,427,validate\n"
                 "air drumming,3caPS4FHFF8,36,46,validate\n")
    assert detect_format(path) == "kinetics_csv"
    samples = load_annotations(path, class_names=["abseiling", "air drumming"])
    assert samples == [Sample("0wR5jVB-WPk_000417_000427.mp4", 0), Sample("3caPS4FHFF8_000036_000046.mp4", 1)]
    custom = load_annotations(path, root="videos", filename_pattern="{split}/{label}/{youtube_id}.mp4")
    assert custom[1].path == "videos/validate/air drumming/3caPS4FHFF8.mp4"


def test_kinetics_csv_errors_name_file_and_line(tmp_path):
    bad_time = write(tmp_path / "a.csv", "label,youtube_id,time_start,time_end,split\nx,id1,1,2,train\nx,id2,abc,2,train\n")
    with pytest.raises(UserError, match=r"a\.csv:3: time_start 'abc' is not a number"):
        load_annotations(bad_time)
    short = write(tmp_path / "b.csv", "label,youtube_id,time_start,time_end,split\nx,id1,1\n")
    with pytest.raises(UserError, match=r"b\.csv:2: expected 5 comma-separated fields, got 3"):
        load_annotations(short)
    pattern = write(tmp_path / "c.csv", "label,youtube_id,time_start,time_end,split\nx,id1,1,2,train\n")
    with pytest.raises(UserError, match=r"c\.csv:2: file-name pattern"):
        load_annotations(pattern, fmt="kinetics_csv", filename_pattern="{missing}.mp4")


def test_ssv2_json_with_labels_next_to_it(tmp_path):
    labels = {"Holding something next to something": "1", "Pushing something from left to right": "0"}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    entries = [
        {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
         "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
        {"id": "42326", "label": "pushing a pen from left to right",
         "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
    ]
    path = write(tmp_path / "something-something-v2-validation.json", json.dumps(entries))
    result = read_annotations(path, root="20bn")
    assert result.class_names == ["Pushing something from left to right", "Holding something next to something"]
    assert result.samples == [Sample("20bn/78687.webm", 1), Sample("20bn/42326.webm", 0)]
    assert load_annotations(path, class_names=str(tmp_path / "labels.json"), filename_pattern="{id}.mp4")[0].path == "78687.mp4"


def test_ssv2_errors(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps({"Pushing something": "0"}))
    path = write(tmp_path / "test.json", json.dumps([{"id": "1"}]))
    with pytest.raises(UserError, match=r"test\.json: entry 1 \(id 1\): no 'template'"):
        load_annotations(path)
    unknown = write(tmp_path / "train.json", json.dumps([{"id": "1", "template": "Pushing [something]"},
                                                        {"id": "2", "template": "Dropping [something]"}]))
    with pytest.raises(UserError, match=r"train\.json: entry 2: label 'Dropping something' is not a known class"):
        load_annotations(unknown)
    lonely = tmp_path / "other"
    lonely.mkdir()
    with pytest.raises(UserError, match="labels JSON"):
        load_annotations(write(lonely / "train.json", "[]"))
    with pytest.raises(UserError, match=r"broken\.json:1: invalid JSON"):
        load_annotations(write(tmp_path / "broken.json", "[{"))


def test_frame_folders(tmp_path):
    path = write(tmp_path / "frames.txt", "rawframes/vid_001 150 4\nrawframes/vid_002 32 0\n")
    assert detect_format(path) == "frames"
    assert load_annotations(path, root="/d") == [Sample("/d/rawframes/vid_001", 4, 150), Sample("/d/rawframes/vid_002", 0, 32)]
    bad = write(tmp_path / "bad.txt", "rawframes/vid_001 150 4\nrawframes/vid_002 many 0\n")
    with pytest.raises(UserError, match=r"bad\.txt:2: frame count 'many' is not a positive integer"):
        load_annotations(bad, fmt="frames")


def test_malformed_lines_name_file_line_and_problem(tmp_path):
    path = write(tmp_path / "train.txt", "a.mp4 1\nb.mp4\n")
    with pytest.raises(UserError, match=r"train\.txt:2: expected 'PATH LABEL'.*'b\.mp4'"):
        load_annotations(path)
    path = write(tmp_path / "range.txt", "a.mp4 1\nb.mp4 5\n")
    with pytest.raises(UserError, match=r"range\.txt:2: label 5 is out of range \(0\.\.2\)"):
        load_annotations(path, class_names=["a", "b", "c"])
    path = write(tmp_path / "names.txt", "a.mp4 cat\nb.mp4 dog\n")
    with pytest.raises(UserError, match=r"names\.txt:2: label 'dog' is not a known class name"):
        load_annotations(path, class_names=["cat"])
    with pytest.raises(UserError, match="not found"):
        load_annotations(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="no samples"):
        load_annotations(write(tmp_path / "empty.txt", "\n\n"))
    with pytest.raises(UserError, match="unknown annotation format"):
        load_annotations(path, fmt="xml")


def test_class_name_files(tmp_path):
    assert load_class_names(write(tmp_path / "c.txt", "zebra\n\nant\n")) == ["zebra", "ant"]
    assert load_class_names(write(tmp_path / "c.csv", "id,name\n1,ant\n0,zebra, striped\n")) == ["zebra, striped", "ant"]
    assert load_class_names(write(tmp_path / "list.json", '["a", "b"]')) == ["a", "b"]
    assert load_class_names(write(tmp_path / "ids.json", '{"1": "b", "0": "a"}')) == ["a", "b"]
    assert load_class_names(write(tmp_path / "names.json", '{"b": "1", "a": 0}')) == ["a", "b"]
    with pytest.raises(UserError, match=r"gap\.csv: class ids must be 0\.\.1"):
        load_class_names(write(tmp_path / "gap.csv", "0,a\n2,b\n"))
    with pytest.raises(UserError, match=r"bad\.csv:2: class id 'x' is not an integer"):
        load_class_names(write(tmp_path / "bad.csv", "0,a\nx,b\n"))


# ------------------------------------------------------------------------------------------ the format registry

def _prepare_format_choices():
    from ila.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    prepare = commands.choices["prepare"]
    return next(a for a in prepare._actions if "--format" in a.option_strings).choices


def test_formats_are_registered_once_by_their_readers():
    from ila.data import annotations, folders

    assert ANNOTATION_FORMATS.names() == ("list", "kinetics_csv", "ssv2", "frames", "folders")
    assert ANNOTATION_FORMATS.get("list").obj is annotations.read_list
    assert ANNOTATION_FORMATS.get("folders").obj is folders.read_folders
    assert [e.name for e in ANNOTATION_FORMATS if e.info.get("folder")] == ["folders"]
    assert all(e.description for e in ANNOTATION_FORMATS)


def test_formats_load_whichever_data_module_is_imported_first():
    """annotations never imports folders (the registry loads it by name): no import cycle, the same order."""
    import subprocess
    import sys

    for first in ("ila.data.annotations", "ila.data.folders", "ila.data.prepare", "ila.config"):
        code = f"import {first}; from ila.data.annotations import ANNOTATION_FORMATS as F; print(','.join(F.names()))"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "list,kinetics_csv,ssv2,frames,folders", out.stderr


def test_every_registered_format_is_a_valid_data_format_and_prepare_choice():
    from ila.config import REGISTERED_CHOICES, config_keys, load_config

    choices = ("auto",) + ANNOTATION_FORMATS.names()
    assert REGISTERED_CHOICES["data.format"]() == choices
    assert tuple(_prepare_format_choices()) == choices
    assert next(r for r in config_keys() if r[0] == "data.format")[1:] == ("one of " + ", ".join(choices), "auto")
    for name in choices:
        assert load_config("tiny", [f"data.format={name}"]).data.format == name


def test_an_unknown_format_names_exactly_the_registered_ones(tmp_path, capsys):
    from ila.cli import main
    from ila.config import load_config

    allowed = ", ".join(("auto",) + ANNOTATION_FORMATS.names())
    for value in ("xml", "List", "", "list,ssv2"):
        with pytest.raises(UserError) as e:
            load_config("tiny", [f"data.format={value}"])
        assert str(e.value) == f"data.format={value!r} is not allowed; use one of {allowed}"
    listing = write(tmp_path / "train.txt", "a.mp4 0\n")
    with pytest.raises(UserError) as e:
        read_annotations(listing, fmt="xml")
    assert str(e.value) == f"unknown annotation format 'xml' for {listing}; use one of {allowed}"
    with pytest.raises(SystemExit):
        main(["prepare", listing, str(tmp_path / "out"), "--format", "xml"])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "argument --format: invalid choice: 'xml'" in err
    assert "choose from " + ", ".join(repr(c) for c in allowed.split(", ")) in err or \
        "choose from " + allowed in err


def test_a_format_registered_later_is_a_valid_data_format(tmp_path):
    """A format registered by anyone (here: a test) is a valid data.format, an `ila prepare --format` choice, read
    through `read_annotations` and `read_split`, and found by `auto`, without any other edit; then unregistered."""
    from ila.config import load_config
    from ila.data.annotations import Annotations, annotations_from_rows
    from ila.engine.loaders import read_split

    def read_tsv(path, root="", class_names=None, filename_pattern=None, allow_duplicates=False) -> Annotations:
        rows = [(n, *line.split("\t")[::-1], None) for n, line in enumerate(open(path).read().splitlines(), 1)]
        return annotations_from_rows(path, rows, root, class_names, allow_duplicates)

    tsv = write(tmp_path / "train.tsv", "cat\ta.mp4\ndog\tb.mp4\n")
    ANNOTATION_FORMATS.register("label_tab_path", read_tsv, description="LABEL<TAB>PATH lines",
                                detect=lambda path, head: path.endswith(".tsv"))
    try:
        assert "label_tab_path" in _prepare_format_choices()
        for fmt in ("label_tab_path", "auto"):
            cfg = load_config("tiny", [f"data.format={fmt}", f"data.train_list={tsv}", f"data.root={tmp_path}"])
            assert cfg.data.format == fmt
            samples, names = read_split(cfg, "train")
            assert names == ["cat", "dog"]
            assert samples == [Sample(str(tmp_path / "a.mp4"), 0), Sample(str(tmp_path / "b.mp4"), 1)]
        assert detect_format(tsv) == "label_tab_path"
    finally:
        ANNOTATION_FORMATS.unregister("label_tab_path")
    assert "label_tab_path" not in _prepare_format_choices()
    with pytest.raises(UserError, match="data.format='label_tab_path' is not allowed; use one of auto, list,"):
        load_config("tiny", ["data.format=label_tab_path"])
    assert detect_format(tsv) == "list"


def test_folders_are_a_format_chosen_by_auto(tmp_path):
    for cls, name in (("run", "a.mp4"), ("jump", "b.mkv"), ("jump", "c.webm")):
        (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / cls / name).write_bytes(b"")
    folder = str(tmp_path / "data")
    assert detect_format(folder) == "folders"
    for fmt in ("auto", "folders"):
        ann = read_annotations(folder, fmt=fmt)
        assert ann.class_names == ["jump", "run"] and [s.label for s in ann.samples] == [0, 0, 1]
    assert read_annotations(folder, class_names=["run", "jump"]).class_names == ["run", "jump"]
    listing = write(tmp_path / "train.txt", "a.mp4 0\n")
    for path, fmt, words in ((folder, "list", r"is a folder; annotation format 'list' reads an annotation file"),
                             (listing, "folders", r"is a file; annotation format 'folders' reads a folder"),
                             (str(tmp_path / "none"), "folders", "dataset folder not found: "),
                             (str(tmp_path / "none"), "auto", "annotation file not found: "),
                             (str(tmp_path / "none"), "list", "annotation file not found: ")):
        with pytest.raises(UserError, match=words) as e:
            read_annotations(path, fmt=fmt)
        assert "\n" not in str(e.value)
