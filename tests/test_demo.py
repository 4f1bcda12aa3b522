"""`ila demo --quick`: the whole demo runs end to end through the engine on a tiny budget (the accuracy claim
needs the full budget and is measured, not tested: see the README's demo section), and each of its models is
trained again, weight for weight, by `ila train --config` on the YAML the demo wrote. Also: the in-memory clip
source (`data.cache=memory`) serves exactly the clips of the decoding dataset, and `train.init_parts=tower`
takes the image tower (and only it) from a pretrained checkpoint."""
from __future__ import annotations

from dataclasses import replace
import json
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from ila.cli import main
from ila.data.annotations import read_annotations
from ila.data.cache import MemoryVideoDataset
from ila.data.dataset import VideoDataset
from ila.data.synthetic import SHAPES, appearance_class_names, make_appearance_dataset
from ila.config import load_config
from ila.demo import (QUICK, VARIANTS, Row, format_table, merge_results, parse_row, parse_rows, prepare_data,
                      run_demo)
from ila.errors import UserError
from ila.weights.checkpoint import read_checkpoint
from ila.models.ila import parameter_group


def weights(path):
    return read_checkpoint(path)["model"]


def tower(state):
    return {k: v for k, v in state.items() if k.startswith("visual.") and parameter_group(k) == "clip"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0     # both settings by default
    return out


def test_quick_demo_writes_table_configs_pictures_and_checkpoints(demo, capsys):
    results = json.loads((demo / "results.json").read_text())["results"]
    assert set(results) == {f"{s}/{v}" for s in ("scratch", "frozen") for v in VARIANTS}
    table = (demo / "results.md").read_text()
    assert "| setting | model" in table and "GFLOPs/view" in table and "train s" in table
    results = {key: runs[0] for key, runs in results.items() if len(runs) == 1}   # one seed: one run each
    assert set(results) == {f"{s}/{v}" for s in ("scratch", "frozen") for v in VARIANTS}
    for key, r in results.items():
        assert r["seed"] == 0 and r["train_steps"] == QUICK.epochs * QUICK.train_clips // QUICK.batch_size
        assert 0 <= r["top1"] <= 100 and r["gflops_per_view"] > 0 and r["train_seconds"] > 0
        run = demo / r["run"]
        # trained and evaluated by the engine: its run directory, curves and `ila eval` outputs
        for name in ("metrics.jsonl", "config.yaml", "curves.png", "eval/metrics.json", "eval/confusion.png"):
            assert (run / name).is_file(), (key, name)
        assert json.loads((run / "eval/metrics.json").read_text())["top1"] == pytest.approx(r["top1"])
        assert (demo / r["config"]).is_file()
    # where the points land: one validation video of each class (the quick val split has 16 videos, 8 classes)
    pngs = sorted((demo / "points").glob("*.png"))
    assert [p.stem for p in pngs] == [f"{k:06d}" for k in range(8)]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000 for p in pngs)
    # ILA costs more than frame averaging; frozen models train only alignment, skip projections and head
    assert results["scratch/ila"]["gflops_per_view"] > results["scratch/mean"]["gflops_per_view"]
    for v in VARIANTS:
        assert results[f"frozen/{v}"]["trainable_m"] < results[f"scratch/{v}"]["trainable_m"] \
            == results[f"scratch/{v}"]["params_m"]
    # a second run reuses the generated data
    prepare_data(demo / "data", QUICK, seed=0)
    assert "reusing" in capsys.readouterr().out


def test_frozen_models_keep_the_pretrained_tower(demo):
    results = json.loads((demo / "results.json").read_text())["results"]
    pretrained = tower(weights(demo / "configs" / ".." / "pretrain"))
    assert len(pretrained) > 10
    for v in VARIANTS:
        trained = tower(weights(results[f"frozen/{v}"][0]["checkpoint"]))
        assert trained.keys() == pretrained.keys()
        assert all(torch.equal(trained[k], pretrained[k]) for k in trained), v
        scratch = tower(weights(results[f"scratch/{v}"][0]["checkpoint"]))
        assert not all(torch.equal(scratch[k], pretrained[k]) for k in scratch)
    # the pretraining saw appearance classes on single frames
    saved = read_checkpoint(demo / "pretrain")
    assert saved["config"]["model"]["num_frames"] == 1 and saved["class_names"] == appearance_class_names()


@pytest.mark.parametrize("name", ["ila", "frozen-ila"])
def test_ila_train_on_the_demo_config_gives_the_demo_model(demo, tmp_path, name):
    results = json.loads((demo / "results.json").read_text())["results"]
    r = results["scratch/ila" if name == "ila" else "frozen/ila"][0]
    assert main(["train", "--config", str(demo / "configs" / f"{name}.yaml"), "--output", str(tmp_path / "again")]) == 0
    again = sorted((tmp_path / "again").glob("checkpoint-*.pt"))[-1]
    mine, theirs = weights(again), weights(r["checkpoint"])
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), name


def test_seeds_give_mean_and_spread_on_the_textured_set(tmp_path):
    out = tmp_path / "seeds"
    assert main(["demo", "--quick", "--out", str(out), "--seeds", "2", "--seed", "3", "--data", "textured",
                 "--settings", "scratch", "--variants", "ila,mean"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["seeds"] == [3, 4] and saved["data"] == "textured"
    assert saved["budget"]["texture"] > 0 and saved["budget"]["distractors"] == 2 and saved["budget"]["size"] == 64
    for key in ("scratch/ila", "scratch/mean"):
        runs = saved["results"][key]
        assert [r["seed"] for r in runs] == [3, 4]
        assert [Path(r["run"]).parent.name for r in runs] == ["seed-3", "seed-4"]
        assert all((Path(r["config"]).is_file() for r in runs))
    # the two seeds train different models
    a, b = (weights(r["checkpoint"]) for r in saved["results"]["scratch/ila"])
    assert not all(torch.equal(a[k], b[k]) for k in a)
    table = (out / "results.md").read_text()
    ila = [line for line in table.splitlines() if "| ila " in line][0]
    first, second = (r["top1"] for r in saved["results"]["scratch/ila"])
    assert " ± " in ila and f"{first:.1f} / {second:.1f}" in ila
    # the generated set is textured (make-dataset's defaults): reused with the same parameters
    assert json.loads((out / "data-textured" / "demo-dataset.json").read_text())["size"] == 64


def test_demo_refuses_bad_seeds_and_data(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "x"), "--seeds", "0"]) == 2
    assert "--seeds must be a whole number from 1 to 100" in capsys.readouterr().err
    for epochs in ("0", "-3"):                                # 0 used to fall back to the default silently
        assert main(["demo", "--quick", "--out", str(tmp_path / "x"), "--epochs", epochs]) == 2
        assert f"--epochs must be a whole number from 1 to 1000; got {epochs}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:                   # argparse: one line, exit 2
        main(["demo", "--quick", "--out", str(tmp_path / "x"), "--data", "noisy"])
    assert stop.value.code == 2 and "invalid choice: 'noisy'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_memory_cache_serves_the_decoding_datasets_clips(motion):
    samples = read_annotations(str(motion / "train.txt"), root=str(motion)).samples
    for train in (True, False):
        args = dict(num_frames=4, input_size=28, train=train, clips=2, seed=3)
        plain, cached = VideoDataset(samples, "", **args), MemoryVideoDataset(samples, "", **args)
        for epoch in (0, 1):
            plain.set_epoch(epoch)
            cached.set_epoch(epoch)
            for i in range(len(samples)):
                a, b = plain[i], cached[i]
                assert a["label"] == b["label"] and torch.equal(a["video"], b["video"]), (train, epoch, i)


def test_memory_cache_bad_files_follow_the_policy(tmp_path, motion):
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = read_annotations(str(motion / "val.txt"), root=str(motion)).samples
    bad = read_annotations_line(tmp_path, "empty.mp4 0")
    test = MemoryVideoDataset(good + bad, "", num_frames=4, input_size=28, train=False, bad_file_policy="mark")
    assert test[len(good)]["error"] and not test[0]["error"]
    train = MemoryVideoDataset(good + bad, "", num_frames=4, input_size=28, train=True)
    item = train[len(good)]
    assert item["skipped"] >= 1 and "empty.mp4" in item["skipped_files"] and item["sample_index"] < len(good)


def read_annotations_line(root, line):
    (root / "list.txt").write_text(line + "\n")
    return read_annotations(str(root / "list.txt"), root=str(root)).samples


def test_appearance_set_labels_shape_and_colour(tmp_path):
    make_appearance_dataset(str(tmp_path), num_train=15, num_val=0, size=32, frames=4, texture=0, distractors=0,
                            verbose=False)
    names = (tmp_path / "classes.txt").read_text().split("\n")[:-1]
    assert names == appearance_class_names() and len(names) == len(SHAPES) * 3
    labels = [int(line.split()[1]) for line in (tmp_path / "train.txt").read_text().splitlines()]
    assert labels == list(range(15))


def test_tower_init_refuses_another_geometry(tmp_path, motion):
    """train.init_parts=tower from a checkpoint whose tower has another width: one line, no training."""
    from ila.config import load_config
    from ila.engine.train import initial_model
    from ila.models.ila import build_model
    from ila.engine.checkpoint import save_checkpoint

    cfg = load_config("tiny", [f"data.train_list={motion}/train.txt", "train.init=none"])
    other = load_config("tiny", ["model.vision_width=128"])
    path = save_checkpoint(tmp_path / "other.pt", build_model(other.model), other, [str(i) for i in range(8)])
    cfg.train.init, cfg.train.init_parts = str(path), "tower"
    with pytest.raises(Exception) as e:
        initial_model(cfg)
    assert type(e.value).__name__ == "UserError" and "fit the config" in str(e.value) and "\n" not in str(e.value)
    for init in ("none", str(motion / "classes.txt")):     # no ila checkpoint to take a tower from
        cfg.train.init = init
        with pytest.raises(Exception, match="takes the image tower from an ila checkpoint"):
            initial_model(cfg)


def test_demo_does_not_import_the_cli():
    code = "import sys, ila.demo; print('ila.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "False"


def test_appearance_overrides_leave_the_motion_clips_unchanged():
    """render_clip's shape/colour overrides draw nothing when unused: a clip with distractors is byte for byte the
    one the generator wrote before they existed (sha256 of that version's output)."""
    import hashlib

    import numpy as np

    from ila.data.synthetic import render_clip

    clip = render_clip(3, 32, 8, np.random.default_rng([0, 0, 3]), distractors=2, texture=0.5)
    assert hashlib.sha256(clip.tobytes()).hexdigest() == \
        "38692857baf0017bcdf2eb4000795fa1b8c1f43b8ba9f3535d4f529a6fc607d1"


def test_rows_with_pairing_blocks_and_alignment_loss(tmp_path, capsys):
    """The ablation rows: each one its own model and config at the same budget, ILA's rows with point_error."""
    out = tmp_path / "rows"
    rows = ["ila", "pool", "shift", "ila@first", "ila@half", "ila@noloss"]
    assert main(["demo", "--quick", "--out", str(out), "--settings", "scratch", "--variants", ",".join(rows),
                 "--align-loss", "on"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["results"]) == [f"scratch/{r}" for r in rows]
    assert saved["rows"]["ila@first"] == {"model.align_pairing": "first"}
    assert saved["rows"]["ila@half"] == {"model.align_blocks": "last:2"}               # the demo preset: 4 blocks
    assert saved["budget"]["align_loss_weight"] == 1.0                                 # --align-loss on
    configs = {r: load_config(str(out / "configs" / f"{Row(r, '').slug}.yaml")) for r in rows}
    assert configs["ila@first"].model.align_pairing == "first" and configs["ila"].model.align_pairing == "adjacent"
    assert configs["ila@half"].model.align_blocks == "last:2" and configs["ila"].model.align_blocks == "all"
    assert [configs[r].train.align_loss_weight for r in rows] == [1.0] * 5 + [0.0]
    assert configs["pool"].model.temporal == "pool" and configs["shift"].model.temporal == "shift"
    assert len({c.train.epochs for c in configs.values()}) == 1                       # one budget for every row
    results = {key.split("/")[1]: runs[0] for key, runs in saved["results"].items()}
    assert read_checkpoint(results["ila@first"]["checkpoint"])["config"]["model"]["align_pairing"] == "first"
    for row, r in results.items():
        tracked = row.startswith("ila")
        assert (r["point_error"] is not None) is tracked and (r["centre_point_error"] is not None) is tracked
        if tracked:
            saved_eval = json.loads((Path(r["run"]) / "eval" / "metrics.json").read_text())
            assert saved_eval["point_error"] == pytest.approx(r["point_error"])
    table = (out / "results.md").read_text().splitlines()
    assert "point err" in table[0] and "centre err" in table[0]
    body = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [cells[1] for cells in body] == rows
    assert [cells[-1] != "-" for cells in body] == [r.startswith("ila") for r in rows]
    assert float(body[4][4]) < float(body[0][4])                      # half the IST blocks: fewer GFLOPs per view
    assert "scratch: ILA - pool:" in printed and "scratch: ILA - ila@first:" in printed


@pytest.mark.parametrize("row, message", [
    ("mean@first", "row 'mean@first': mean has no IST blocks, so the row options do not apply"),
    ("shift@loss", "row 'shift@loss': shift has no IST blocks"),
    ("ila@bogus", "row 'ila@bogus': unknown option 'bogus'; use adjacent, first, middle, half"),
    ("ila@", "row 'ila@': unknown option ''"),
    ("ila@last:9", "row 'ila@last:9': model.align_blocks='last:9' is not allowed"),
    ("ila@every:x", "row 'ila@every:x': model.align_blocks='every:x' is not allowed"),
    ("ila@first@middle", "row 'ila@first@middle' sets model.align_pairing twice"),
    ("nope@first", "unknown variant(s) ['nope']"),
])
def test_bad_rows_are_refused_in_one_line(tmp_path, capsys, row, message):
    assert main(["demo", "--quick", "--out", str(tmp_path / "x"), "--variants", row]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_rows_parse_and_refuse_duplicates():
    assert parse_row("ila@middle@last:1@loss") == Row("ila@middle@last:1@loss", "ila", (
        ("model.align_pairing", "middle"), ("model.align_blocks", "last:1"), ("train.align_loss_weight", 1.0)))
    assert parse_row("pool@every:2").slug == "pool-every2" and parse_row("attention") == Row("attention", "attention")
    with pytest.raises(UserError, match="^row 'ila' is given twice$"):
        parse_rows(["ila", "mean", "ila"])
    with pytest.raises(UserError, match="^no variant given"):
        parse_rows([])


def test_merge_results_of_one_process_per_seed(tmp_path):
    for seed, top1 in ((0, 50.0), (1, 60.0)):
        run = {"top1": top1, "mean_class_acc": top1, "gflops_per_view": 0.09, "params_m": 0.64, "trainable_m": 0.64,
               "train_seconds": 10.0, "train_steps_per_s": 5.0, "point_error": 1.0 + seed, "centre_point_error": 1.5,
               "seed": seed}
        (tmp_path / f"s{seed}.json").write_text(json.dumps({"results": {"scratch/ila@first": [run]}}))
    merged = merge_results([tmp_path / "s0.json", tmp_path / "s1.json"])
    assert list(merged) == [("scratch", "ila@first")] and [r["seed"] for r in merged[("scratch", "ila@first")]] == [0, 1]
    row = format_table(merged).splitlines()[2]
    assert "55.0 ± 7.1" in row and "1.50 ± 0.71" in row and "50.0 / 60.0" in row
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(UserError, match="is not the results.json of ila demo$"):
        merge_results([tmp_path / "bad.json"])


def test_changes_reach_every_model_and_the_pretrained_tower(tmp_path):
    """`run_demo(changes=...)` (benchmarks/alignment_search.py's settings): an 8x8 patch grid and 4 frames for
    every row, the pretrained tower at the same resolution on single frames; a budget's `pairs` and `flicker`
    make the set (2 translation pairs: 4 classes), recorded in its marker so another budget makes it again."""
    grid8 = (("model.image_resolution", 64), ("data.input_size", 64), ("model.num_frames", 4),
             ("data.num_frames", 4))
    budget = replace(QUICK, size=72, pairs=("horizontal", "vertical"), motion=(0.8, 1.0), texture=0.8, flicker=True,
                     distractors=0, train_clips=16, val_clips=8, epochs=1)
    out = tmp_path / "search"
    results = run_demo(out, variants=["ila@loss", "pool"], budget=budget, settings=("frozen",), changes=grid8)
    for row in ("ila-loss", "pool"):
        cfg = load_config(str(out / "configs" / f"frozen-{row}.yaml"))
        assert (cfg.model.image_resolution, cfg.data.input_size, cfg.model.num_frames, cfg.data.num_frames) == \
            (64, 64, 4, 4)
        assert cfg.model.grid == 8
        trained = read_checkpoint(results[f"frozen/{row.replace('-', '@')}"][0]["checkpoint"])["config"]["model"]
        assert trained["num_classes"] == 4 and trained["image_resolution"] == 64       # one output per class
    pretrain = load_config(str(out / "configs" / "pretrain.yaml"))
    assert (pretrain.model.image_resolution, pretrain.model.num_frames, pretrain.data.num_frames) == (64, 1, 1)
    assert results["frozen/ila@loss"][0]["align_loss_weight"] == 1.0
    assert results["frozen/ila@loss"][0]["point_error"] is not None
    marker = json.loads((out / "data" / "demo-dataset.json").read_text())
    assert marker["pairs"] == ["horizontal", "vertical"] and marker["flicker"] is True and marker["size"] == 72
    assert (out / "data" / "classes.txt").read_text().splitlines() == ["moving left to right", "moving right to left",
                                                                        "moving top to bottom", "moving bottom to top"]
    assert "flicker" not in json.loads((out / "data-appearance" / "demo-dataset.json").read_text())
    # the same folder with the flicker off: the set is made again, not reused
    prepare_data(out / "data", replace(budget, flicker=False), 0)
    assert "flicker" not in json.loads((out / "data" / "demo-dataset.json").read_text())


@pytest.mark.parametrize("change, message", [
    (("eval.clips", 1),
     r"config change \('eval.clips', 1\): give \(KEY, VALUE\) with a key of model., data. or train."),
    (("model", 1), r"config change \('model', 1\): give \(KEY, VALUE\)"),
    ((3, 1), r"config change \(3, 1\): give \(KEY, VALUE\)"),
    ("model.num_frames", r"config change 'model.num_frames': give \(KEY, VALUE\)"),
])
def test_bad_changes_are_one_line_before_anything_runs(tmp_path, change, message):
    with pytest.raises(UserError, match=message) as info:
        run_demo(tmp_path / "x", quick=True, variants=["ila"], settings=("scratch",), changes=(change,))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()                       # refused before the set is generated


def test_an_unknown_config_key_in_changes_is_one_line(tmp_path):
    with pytest.raises(UserError, match="unknown config key 'model.bogus'"):
        run_demo(tmp_path / "x", quick=True, variants=["ila"], settings=("scratch",), changes=(("model.bogus", 1),))
    assert not (tmp_path / "x" / "ila").exists()
