"""Hostile and careless inputs to the annotation readers, the config and `ila info`: each is read correctly
or refused with one line naming the file, the line (or entry, or key) and what to fix."""
import json

import pytest
import torch
import yaml

import ila
from ila.cli import main
from ila.config import config_from_dict, load_config, require_complete
from ila.data.annotations import Sample, load_annotations, load_class_names, read_annotations
from ila.errors import UserError

CSV_HEADER = "label,youtube_id,time_start,time_end,split\n"


def write(path, data):
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def refused(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    return message


# ------------------------------------------------------------------------------------------ duplicates

def test_duplicated_list_lines_are_refused_naming_lines_and_count(tmp_path):
    path = write(tmp_path / "val.txt", "a.mp4 0\nb.mp4 1\nc.mp4 1\na.mp4 0\nb.mp4 0\n./c.mp4 1\nd.mp4 1\nd.mp4 1\n")
    message = refused(load_annotations, path)
    assert message == (f"{path}: 4 duplicated videos would be counted twice: line 4 repeats line 1 ('a.mp4'); "
                       f"line 5 repeats line 2 ('b.mp4'); line 6 repeats line 3 ('./c.mp4'); and 1 more; "
                       f"remove the repeated lines")
    # deliberate oversampling is a library option
    assert len(load_annotations(path, allow_duplicates=True)) == 8


def test_duplicates_in_csv_and_ssv2_name_their_rows(tmp_path):
    path = write(tmp_path / "k.csv", CSV_HEADER + "x,id1,1,11,t\ny,id2,1,11,t\nx,id1,1,11,t\n")
    assert "k.csv: 1 duplicated video would be counted twice: line 4 repeats line 2" in refused(load_annotations, path)
    (tmp_path / "labels.json").write_text('{"Pushing something": "0"}')
    entries = [{"id": "7", "template": "Pushing [something]"}, {"id": 7, "template": "Pushing [something]"}]
    path = write(tmp_path / "train.json", json.dumps(entries))
    assert "entry 2 repeats entry 1 ('7.webm')" in refused(load_annotations, path)


# ------------------------------------------------------------------------------------------ SSv2 JSON types

@pytest.mark.parametrize("data, message", [
    ({"id": "1", "template": "A"}, r"expected a JSON list of videos .*got a JSON object"),
    ("videos", r"expected a JSON list of videos .*got a JSON string"),
    ([["1", "A"]], r"entry 1: expected an object with 'id' and 'template', got a JSON list"),
    ([{"id": "1", "template": 5}], r"entry 1 \(id 1\): 'template' must be a string, got number 5"),
    ([{"id": "1", "template": ["A"]}], r"entry 1 \(id 1\): 'template' must be a string, got list"),
    ([{"id": "1", "template": None}], r"entry 1 \(id 1\): 'template' must be a string, got null"),
    ([{"id": "1", "template": "A", "label": 3}], r"entry 1 \(id 1\): 'label' must be a string, got number 3"),
    ([{"id": ["1"], "template": "A"}], r"entry 1: 'id' must be a non-empty string or integer, got list"),
    ([{"id": 1.5, "template": "A"}], r"entry 1: 'id' must be a non-empty string or integer, got number 1.5"),
    ([{"id": True, "template": "A"}], r"entry 1: 'id' must be a non-empty string or integer, got boolean"),
    ([{"id": "", "template": "A"}], r"entry 1: 'id' must be a non-empty string or integer"),
    ([{"id": "\u0000", "template": "A"}], r"entry 1: the file name '\\x00.webm' holds a NUL character"),
    ([{"id": "1", "template": "[]"}], r"entry 1 \(id 1\): empty 'template'"),
])
def test_ssv2_entries_of_the_wrong_type_are_refused(tmp_path, data, message):
    (tmp_path / "labels.json").write_text('{"A": "0"}')
    path = write(tmp_path / "train.json", json.dumps(data))
    assert refused(load_annotations, path).startswith(path)
    with pytest.raises(UserError, match=message):
        load_annotations(path)


def test_ssv2_integer_ids_are_read(tmp_path):
    (tmp_path / "labels.json").write_text('{"A": "0", "B": 1}')
    path = write(tmp_path / "train.json", json.dumps([{"id": 12, "template": "B"}, {"id": "13", "template": "A"}]))
    assert load_annotations(path) == [Sample("12.webm", 1), Sample("13.webm", 0)]


@pytest.mark.parametrize("name, text, message", [
    ("labels.json", '{"A": true, "B": 0}', r"some keys and some values are not integers"),
    ("labels.json", '["A", 3]', r"item 1 is a number 3"),
    ("labels.json", '["A", "A"]', r"labels\.json: item 1: class name 'A' repeats item 0"),
    ("labels.json", '["A", " "]', r"labels\.json: item 1: empty class name"),
    ("labels.json", '{"0": ["A"]}', r"the name of id 0 is a list"),
    ("labels.json", '{"A": 0, "A": 1}', r"key 'A' appears twice in one JSON object"),
    ("labels.json", '{"A": 0, "B": 2}', r"class ids must be 0\.\.1 without gaps or repeats \(id 1 is missing\)"),
    ("labels.json", '{"A": 0, "B": 0}', r"\(id 0 appears twice\)"),
    ("labels.json", '{"A": "99999999999999999999"}', r"class id '99999999999999999999' is out of range"),
    ("labels.json", '[]', r"got an empty JSON list"),
    ("labels.json", '7', r"got a JSON number"),
    ("classes.csv", "-1,a\n0,b\n", r"\(id -1 is negative\)"),
    ("classes.csv", "0,a\n1\n", r"classes\.csv:2: expected 'id,name'"),
    ("classes.txt", "a\nb\n\na\n", r"classes\.txt:4: class name 'a' repeats line 1"),
])
def test_class_name_files_of_the_wrong_type_are_refused(tmp_path, name, text, message):
    with pytest.raises(UserError, match=message):
        load_class_names(write(tmp_path / name, text))


# ------------------------------------------------------------------------------------------ Kinetics CSV

@pytest.mark.parametrize("text, message", [
    ("label,youtube_id,time_start\nx,a,1\n", r"k\.csv:1: Kinetics CSV header lacks time_end"),
    ("youtube_id,time_start,time_end\na,1,2\n", r"k\.csv:1: Kinetics CSV header lacks label"),
    ("label,label,youtube_id,time_start,time_end\nx,x,a,1,2\n", r"k\.csv:1: column 'label' appears twice"),
    (CSV_HEADER + "x,a,inf,2,t\n", r"k\.csv:2: time_start 'inf' is not a whole number of seconds >= 0"),
    (CSV_HEADER + "x,a,1.5,2,t\n", r"k\.csv:2: time_start '1\.5' is not a whole number"),
    (CSV_HEADER + "x,a,-3,2,t\n", r"k\.csv:2: time_start '-3' is not a whole number of seconds >= 0"),
    (CSV_HEADER + "x,a,10,2,t\n", r"k\.csv:2: time_end 2 is before time_start 10"),
    (CSV_HEADER + ",a,1,2,t\n", r"k\.csv:2: empty label"),
    (CSV_HEADER + "x,,1,2,t\n", r"k\.csv:2: empty youtube_id"),
    (CSV_HEADER + "x,a,1,2\n", r"k\.csv:2: expected 5 comma-separated fields, got 4"),
    (CSV_HEADER + '"x\ny",a,1,2,t\nz,b,1,2\n', r"k\.csv:4: expected 5 comma-separated fields"),
])
def test_kinetics_csv_mistakes_name_the_line(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        load_annotations(write(tmp_path / "k.csv", text), fmt="kinetics_csv")


def test_kinetics_csv_with_blank_lines_bom_and_crlf_is_read(tmp_path):
    text = "\n" + CSV_HEADER + "abseiling,0wR5jVB-WPk,417.0,427,validate\n\n"
    path = write(tmp_path / "k.csv", b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert load_annotations(path) == [Sample("0wR5jVB-WPk_000417_000427.mp4", 0)]


# ------------------------------------------------------------------------------------------ list files

@pytest.mark.parametrize("text, names, message", [
    ("a.mp4 1.5\nb.mp4 2\n", None, r"mixes class indices \(line 2: '2'\) with class names \(line 1: '1\.5'\)"),
    ("a.mp4 0\nb.mp4 -1\n", None, r"list\.txt:2: label -1 is out of range \(labels start at 0\)"),
    ("a.mp4 0\nb.mp4 3\n", ["a", "b"], r"list\.txt:2: label 3 is out of range \(0\.\.1\)"),
    ("a.mp4 0\nb.mp4 200000\n", None, r"list\.txt:2: label 200000 would mean 200001 classes; pass the class names"),
    ("a.mp4 " + "9" * 5000 + "\n", None, r"list\.txt:1: label '9999.*' is out of range"),
    ("a.mp4 cat\nb.mp4 dog\n", ["cat"], r"list\.txt:2: label 'dog' is not a known class name \(1 class known\)"),
    ("a.mp4 Abseiling\n", ["abseiling", "air drumming"], r"list\.txt:1: label 'Abseiling' is not a known class name "
                                                        r"\(did you mean 'abseiling'\?\)"),
    ("\n\n  \n# only comments\n", None, r"list\.txt: no samples"),
])
def test_list_label_mistakes_name_the_line(tmp_path, text, names, message):
    with pytest.raises(UserError, match=message):
        load_annotations(write(tmp_path / "list.txt", text), class_names=names)


@pytest.mark.parametrize("data", [
    b"\xef\xbb\xbfa.mp4 0\r\n\r\nb.mp4 1\r\n",          # BOM + CRLF + a blank line
    b"a.mp4 0\rb.mp4 1\r",                              # old Mac line ends
    "a.mp4 0\nb.mp4 1\n".encode("utf-16"),              # Windows "Unicode" (UTF-16 with BOM)
    b"a.mp4\t0\n   b.mp4   1   \n",
])
def test_list_encodings_and_line_ends_are_read(tmp_path, data):
    assert load_annotations(write(tmp_path / "list.txt", data)) == [Sample("a.mp4", 0), Sample("b.mp4", 1)]


def test_non_utf8_and_binary_lists_are_refused_with_the_line(tmp_path):
    latin = write(tmp_path / "latin.txt", "a.mp4 0\nb.mp4 1\ncaf\xe9.mp4 1\n".encode("latin-1"))
    assert refused(load_annotations, latin) == (f"{latin}:3: not UTF-8 text (invalid continuation byte at "
                                                f"byte 19); save the file as UTF-8")
    nul = write(tmp_path / "nul.txt", b"a.mp4 0\nb\x00.mp4 1\n")
    assert refused(load_annotations, nul).startswith(f"{nul}:2: holds NUL bytes")
    # a frame count written with a non-ASCII digit is not a frame count
    assert read_annotations(write(tmp_path / "f.txt", "dir \u00b2 1\n")).samples[0].path == "dir"


# ------------------------------------------------------------------------------------------ config

@pytest.mark.parametrize("assignment, message", [
    ("train.lr=inf", r"train\.lr='inf' is not allowed; use a finite number"),
    ("train.lr=nan", r"train\.lr='nan' is not allowed; use a finite number"),
    ("train.lr=-1e999", r"use a finite number"),
    ("train.weight_decay=-0.1", r"train\.weight_decay=-0\.1 is not allowed; use a number >= 0"),
    ("train.epochs=-1", r"train\.epochs=-1 is not allowed; use an integer >= 1"),
    ("train.epochs=" + "9" * 30, r"use an integer between -2\*\*63 and 2\*\*63 - 1"),
    ("train.batch_size=0", r"train\.batch_size=0 is not allowed; use an integer >= 1"),
    ("eval.batch_size=-8", r"eval\.batch_size=-8 is not allowed"),
    ("train.label_smoothing=1.01", r"use a number in \[0, 1\]"),
    ("train.mixup_switch_prob=-0.5", r"use a number in \[0, 1\]"),
    ("data.workers=-1", r"data\.workers=-1 is not allowed"),
    ("data.workers=100000", r"use an integer in \[0, 256\]"),
    ("data.decoder_threads=-1", r"data\.decoder_threads=-1 is not allowed; use an integer in \[0, 64\] \(1: one "),
    ("data.decoder_threads=65", r"data\.decoder_threads=65 is not allowed; use an integer in \[0, 64\]"),
    ("data.decoder_threads=2.5", r"data\.decoder_threads='2\.5' is not allowed; use an integer"),
    ("data.decoder_threads=" + "9" * 30, r"use an integer between -2\*\*63 and 2\*\*63 - 1"),
    ("data.decoder=decord", r"data\.decoder='decord' is not allowed; use one of pyav, torchcodec, torchcodec-cuda"),
    ("data.frame_interval=4611686018427387904", r"data\.frame_interval=4611686018427387904 is not allowed; use an "
                                                r"integer in \[1, 10000\]"),
    ("eval.clips=100000", r"eval\.clips=100000 is not allowed; use an integer in \[1, 1000\]"),
    ("train.seed=-1", r"train\.seed=-1 is not allowed; use an integer in \[0, 4294967295\]"),
    ("model.drop_path=1.5", r"model\.drop_path=1\.5 is not allowed; use a number in \[0\.0, 0\.99\]"),
    ("model.classifier_dropout=-0.1", r"model\.classifier_dropout=-0\.1 is not allowed"),
    ("model.vision_patch_size=0", r"model\.vision_patch_size=0 is not allowed; use an integer in \[1, 4096\]"),
    ("model.vision_width=64000000", r"model\.vision_width=64000000 is not allowed"),
    ("model.num_classes=0", r"model\.num_classes=0 is not allowed"),
    ("data.num_frames=0", r"data\.num_frames=0 is not allowed; use an integer >= 1"),
    ("name=", r"name='' is not allowed; use a non-empty run name"),
    ("output=a\x00b", r"output='a\\x00b' is not allowed; use a string or none"),
])
def test_out_of_range_and_non_finite_numbers_are_refused(assignment, message):
    assert "\n" not in refused(load_config, "tiny", [assignment])
    with pytest.raises(UserError, match=message):
        load_config("tiny", [assignment])


@pytest.mark.parametrize("text, message", [
    ("- model\n- train\n", r"must hold a mapping of sections .*not a list"),
    ("just words\n", r"must hold a mapping of sections .*not a str"),
    ("train:\n  lr: .inf\n", r"train\.lr=inf is not allowed; use a finite number"),
    ("train:\n  lr: .nan\n", r"train\.lr=nan is not allowed"),
    ("train:\n  epochs: 1.0e+300\n", r"train\.epochs=1e\+300 is not allowed; use an integer"),
    ("train:\n  epochs: " + "9" * 5000 + "\n", r"cannot be read \(Exceeds the limit"),
    ("train:\n  epochs: [3]\n", r"train\.epochs=\[3\] is not allowed; use an integer"),
    ("train:\n  compile: 1\n", r"train\.compile=1 is not allowed; use true/false"),
    ("eval:\n  crops: true\n", r"eval\.crops=True is not allowed; use one of 1, 3"),
    ("model:\n  preset: [tiny]\n", r"model\.preset=\['tiny'\] is not allowed"),
    ("1: 2\nmodel: {}\n", r"^1 is not a config key; keys look like section.key"),
    ("data:\n  class_names: [a, b, a]\n", r"use distinct names \('a' appears twice\)"),
    ("data:\n  class_names: &x [*x]\n", r"data\.class_names=\[\[\[\.\.\.\]\]\] is not allowed"),
    ("train: " + "[" * 5000 + "\n", r"nested too deeply"),
    ("train: {lr: [\n", r"run\.yaml:2: not valid YAML"),
])
def test_yaml_configs_of_the_wrong_shape_are_refused(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_config(path)


def test_unreadable_yaml_and_set_into_a_non_mapping_are_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "is not UTF-8 text" in refused(load_config, path)
    (tmp_path / "dir.yaml").mkdir()
    assert "is a directory" in refused(load_config, tmp_path / "dir.yaml")
    path.write_text("train: [1]\n")
    assert refused(load_config, path, ["train.lr=1"]) == \
        "--set train.lr: config section 'train' must be a mapping of keys to values, not a list"
    path.write_bytes(b"\xef\xbb\xbfname: bom\n")       # a BOM is fine
    assert load_config(path).name == "bom"


# ------------------------------------------------------------------------------------------ saved configs

def test_saved_configs_must_describe_the_model_completely():
    saved = load_config("tiny").to_dict()
    assert config_from_dict(saved, complete=True) == load_config("tiny")
    assert refused(require_complete, {}, "ck.pt") == \
        "ck.pt: the saved config has no model section; the file is damaged or incomplete"
    assert refused(require_complete, [1], "ck.pt").startswith("ck.pt: the saved config is a list")
    partial = {**saved, "model": {k: v for k, v in saved["model"].items() if k != "vision_width"}}
    assert refused(config_from_dict, partial, complete=True, source="ck.pt") == (
        "ck.pt: the saved config lacks 1 model key(s) (vision_width); the file is damaged or incomplete, "
        "so the model it describes cannot be rebuilt")
    # a preset name alone does not pin the geometry of saved weights
    assert "lacks 22 model key(s)" in refused(config_from_dict, {"model": {"preset": "tiny"}}, complete=True)
    assert config_from_dict({"model": {"preset": "tiny"}}).model.vision_width == 64   # (not saved: fine)


@pytest.mark.parametrize("config", [{}, {"model": {}}, "tiny", None])
def test_checkpoint_with_incomplete_config_is_refused_not_built_as_the_default_model(tmp_path, config):
    from ila.engine import checkpoint as ckpt
    from ila.engine.train import resume_config
    from ila.models import build_model

    cfg = load_config("tiny", ["model.temporal=mean"])
    path = ckpt.save_checkpoint(tmp_path / "checkpoint-1.pt", build_model(cfg.model), cfg, ["a"])
    state = torch.load(path, weights_only=True)
    state["config"] = config
    torch.save(state, path)
    assert "saved config" in refused(ila.load_checkpoint, path)
    assert "saved config" in refused(resume_config, tmp_path)
    assert main(["eval", "--checkpoint", str(path)]) == 2


# ------------------------------------------------------------------------------------------ ila info

@pytest.mark.parametrize("argv, message", [
    (["--frames", "0"], "--frames 0 is not allowed; give a frame count >= 1"),
    (["--frames", "-4"], "--frames -4 is not allowed; give a frame count >= 1"),
    (["--frames", "100000"], "--frames 100000 is not allowed; use an integer in [1, 1024]"),
    (["--frames", "1"], "--frames 1: temporal modelling needs at least 2 frames"),
    (["--classes", "0"], "--classes 0 is not allowed; give a class count >= 1"),
    (["--classes", "5"], "--classes counts the class names a text head's prompts run against; tiny has a "
                         "classifier head with 8 outputs"),
])
def test_info_refuses_flags_it_cannot_honour(argv, message, capsys):
    assert main(["info", "tiny", *argv]) == 2
    assert capsys.readouterr().err == f"ila info: error: {message}\n"


def test_info_takes_a_single_frame_without_temporal_modelling(capsys):
    assert main(["info", "tiny", "--frames", "1", "--temporal", "mean"]) == 0
    assert "mean, 1 frames x 32px" in capsys.readouterr().out


def test_control_characters_in_paths_labels_and_class_names_are_refused(tmp_path):
    """An escape code in a file name or class name would reach the terminal in later lines; a quoted CSV
    label spanning lines is no class name."""
    path = write(tmp_path / "list.txt", "a.mp4 0\nb\x1b[31m.mp4 1\n")
    assert refused(load_annotations, path) == \
        f"{path}:2: the path 'b\\x1b[31m.mp4' holds a control character ('\\x1b'); remove it"
    path = write(tmp_path / "k.csv", CSV_HEADER + '"air\ndrumming",a,1,2,t\n')
    assert refused(load_annotations, path) == \
        f"{path}:2: the label 'air\\ndrumming' holds a control character ('\\n'); remove it"
    path = write(tmp_path / "labels.json", json.dumps(["a", "b\nc"]))
    assert refused(load_class_names, path) == \
        f"{path}: item 1: class name 'b\\nc' holds a control character ('\\n'); remove it"
    assert load_annotations(write(tmp_path / "tab.txt", "my\tclip.mp4 0\n")) == [Sample("my\tclip.mp4", 0)]
    (tmp_path / "labels.json").write_text('{"A": 0}')
    path = write(tmp_path / "train.json", '[{"id": "\\ud800", "template": "A"}]')
    assert refused(load_annotations, path) == \
        f"{path}: entry 1: the path '\\ud800.webm' holds a lone surrogate ('\\ud800'); remove it"


def test_a_file_too_large_for_an_annotation_list_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "videos.txt"
    with open(path, "wb") as f:                         # sparse: no disk or memory is spent
        f.truncate(3 * 2**30)
    assert refused(load_annotations, str(path)) == (f"{path}: 3.0 GiB is too large for an annotation or class-name "
                                                   f"file (at most 2 GiB of text); is it the right file?")
