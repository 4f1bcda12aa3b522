"""Your own videos end to end, through the real CLI on generated videos: class folders, a held-out split,
long videos in windows, other frame counts and sizes, a first run that says what it does, the command
line a person expects, and per-video errors in `ila predict`."""
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import ila
from ila import __version__
from ila.cli import main
from ila.config import load_config
from ila.data.folders import find_videos, read_class_folders, split_holdout
from ila.data.synthetic import render_clip, write_long_video, write_mp4
from ila.engine import checkpoint as ckpt
from ila.weights import checkpoint as stored
from ila.errors import UserError
from ila.models.resample import fit_position_embeddings, resample_spatial, resample_temporal

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAST = ["data.workers=0", "device=cpu", "train.batch_size=4", "eval.batch_size=4"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def folders(motion, tmp_path_factory):
    """The motion set as class folders: train/ with two mp4 files per class (each training video twice) and, in
    the first class, a nested subfolder with an .mkv, a frame folder and a text file; val/ with the 5 others."""
    root = tmp_path_factory.mktemp("folders")
    names = (motion / "classes.txt").read_text().splitlines()
    for split in ("train", "val"):
        for line in (motion / f"{split}.txt").read_text().splitlines():
            rel, label = line.split()
            target = root / split / names[int(label)]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(motion / rel, target / Path(rel).name)
            if split == "train":
                shutil.copy(motion / rel, target / f"b{Path(rel).name}")
    first = root / "train" / sorted(names)[0]
    clip = render_clip(0, 32, 8, np.random.default_rng(7), distractors=0, texture=0.0)
    (first / "more").mkdir()
    write_mp4(str(first / "more" / "nested.mkv"), clip)          # Matroska, one level deeper
    frames = first / "frames_clip"
    frames.mkdir()
    from PIL import Image

    for i, frame in enumerate(clip):
        Image.fromarray(frame).save(frames / f"{i:03d}.png")
    (first / "notes.txt").write_text("not a video\n")
    (root / "train" / ".hidden").mkdir()
    return root


@pytest.fixture(scope="module")
def run(folders, tmp_path_factory):
    """`ila train --config tiny` on a class folder with 25 % held out, started from another directory."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    here = os.getcwd()
    os.chdir(folders)
    try:
        code = main(["train", "--config", "TINY", "--output", str(out), "--set", "data.train_list=train",
                     "data.val_split=0.25", "train.epochs=2", *FAST])
    finally:
        os.chdir(here)
    assert code == 0
    return out


# ------------------------------------------------------------------------------------------- 1. folders

def test_a_class_folder_is_a_dataset(folders):
    names = sorted(os.listdir(folders / "train"))
    names.remove(".hidden")
    ann = read_class_folders(str(folders / "train"))
    assert ann.class_names == names and len(names) == 8
    first = folders / "train" / names[0]
    assert find_videos(str(first)) == sorted([str(first / "more" / "nested.mkv"), str(first / "frames_clip"),
                                              *(str(p) for p in first.glob("*.mp4"))])
    assert len(ann.samples) == 16 + 2 and all(s.label == names.index(Path(s.path).relative_to(folders / "train").parts[0])
                                             for s in ann.samples)
    # with the checkpoint's names: labels index them; an unknown class folder is one line
    reordered = read_class_folders(str(folders / "val"), list(reversed(names)))
    assert all(s.label == 7 - names.index(Path(s.path).parent.name) for s in reordered.samples)
    with pytest.raises(UserError, match="is not one of the model's 3 classes"):
        read_class_folders(str(folders / "val"), names[:3])


def test_held_out_split_is_stratified_deterministic_and_stable(folders, tmp_path):
    samples = read_class_folders(str(folders / "train")).samples
    train, val = split_holdout(samples, 0.25, str(folders / "train"))
    assert sorted(s.path for s in train + val) == sorted(s.path for s in samples) and not {s.path for s in train} & {
        s.path for s in val}
    assert sorted(s.label for s in val) == list(range(8))           # one per class: 2 videos -> 1 held out (>= 1)
    assert [s.path for s in split_holdout(samples, 0.25, str(folders / "train"))[1]] == [s.path for s in val]
    # adding videos never moves an existing one between the splits
    copy = tmp_path / "more"
    shutil.copytree(folders / "train", copy)
    name = sorted(p.name for p in copy.iterdir() if not p.name.startswith("."))[1]
    for i in range(4):
        shutil.copy(next((copy / name).glob("*.mp4")), copy / name / f"extra{i}.mp4")
    train2, val2 = split_holdout(read_class_folders(str(copy)).samples, 0.25, str(copy))
    rel = lambda ss, base: {os.path.relpath(s.path, base) for s in ss}  # noqa: E731
    assert rel(val, folders / "train") - rel(val2, copy) <= {os.path.relpath(s.path, folders / "train")
                                                             for s in val if name in s.path}
    assert not rel(train, folders / "train") & rel(val2, copy)
    with pytest.raises(UserError, match="data.val_split"):
        load_config("tiny", ["data.val_split=1"])


def test_training_on_a_folder_says_what_it_does_and_ends_with_the_best(run, folders):
    state = stored.read_checkpoint(run / "best.pt")
    assert state["class_names"] == sorted(p.name for p in (folders / "train").iterdir() if not p.name.startswith("."))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train_list"] == str(folders / "train") and os.path.isabs(saved["data"]["root"])
    assert saved["train"]["lr"] == 5e-4 and saved["train"]["mixup"] == 0.0        # the tiny preset's own recipe


def test_run_header_and_summary_lines(folders, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "train", "--config", "tiny", "--output", tmp_path / "r", "--set",
                           f"data.train_list={folders / 'train'}", "data.val_split=0.25", "train.epochs=1", *FAST)
    lines = out.splitlines()
    assert code == 0 and lines[1] == "weights: fresh initialisation (train.init=none)"
    assert lines[2].startswith("parameters: ") and lines[2].endswith(" trainable, 0 frozen")
    assert "lr per group: clip 0.0005 (wd 0.05" in lines[3]
    assert lines[4].startswith("schedule: 1 epochs x 2 steps, linear warm-up over 1 epoch(s) from 0, then per-step cosine")
    assert lines[5] == "augmentation: mixup off, cutmix off, label smoothing 0.1; alignment loss weight 1"
    best = stored.read_checkpoint(tmp_path / "r" / "best.pt")
    assert lines[-1].startswith("best: top-1 ") and lines[-1].endswith(f"at epoch 1, weights {tmp_path / 'r' / 'best.pt'}")
    assert best["class_names"]
    assert (tmp_path / "r" / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_and_predict_from_anywhere(run, folders, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)                               # the run's saved paths are absolute
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", run, "--output", "ev")
    assert code == 0 and out.startswith("8 videos, 1 clip(s) x 1 crop(s)")       # the held-out quarter
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", run, "--output", "ev2", "--set",
                           f"data.val_list={folders / 'val'}")
    assert code == 0 and out.startswith("5 videos")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, folders / "train", "--json", "--topk", "1")
    assert code == 0 and "found 18 video(s) in" in err
    assert len(json.loads(out)) == 18


# ------------------------------------------------------------------------------------------- 3. frames and sizes

def test_position_embeddings_resample_and_stay_identical_when_unchanged():
    from timm.layers import resample_abs_pos_embed

    pos = torch.randn(1 + 16, 64)
    assert resample_spatial(pos, 4) is pos
    assert torch.equal(resample_spatial(pos, 6), resample_abs_pos_embed(pos[None], [6, 6], [4, 4], 1)[0])
    ramp = torch.arange(4.0)[:, None].repeat(1, 3)
    assert torch.equal(resample_temporal(ramp, 4), ramp)
    assert resample_temporal(ramp, 8)[:, 0].tolist() == [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3]
    assert resample_temporal(torch.randn(1, 8, 5), 16).shape == (1, 16, 5)


@pytest.mark.parametrize("temporal", ["ila", "attention"])
def test_checkpoint_at_other_frames_and_size(run, tmp_path, temporal, capsys):
    from ila.config import Config
    from ila.models import build_model

    cfg = load_config("tiny", ["model.temporal=" + temporal, "model.mit_pos_embed=true"])
    model = build_model(cfg.model)
    path = ckpt.save_checkpoint(tmp_path / "m.pt", model, cfg, [f"c{i}" for i in range(8)])
    same, _, _ = ila.load_checkpoint(path)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))
    other, cfg2, _ = ila.load_checkpoint(path, ["data.num_frames=8", "data.input_size=48"])
    assert (cfg2.model.num_frames, cfg2.model.image_resolution) == (8, 48) and isinstance(cfg2, Config)
    assert other.state_dict()["visual.positional_embedding"].shape == (37, 64)
    assert other(torch.randn(1, 8, 3, 48, 48)).logits.shape == (1, 8)
    fitted = fit_position_embeddings(model.state_dict(), other)
    assert torch.equal(fitted["visual.conv1.weight"], model.state_dict()["visual.conv1.weight"])


def test_clip_weights_at_another_image_size(tmp_path):
    import open_clip

    from ila import from_clip

    torch.manual_seed(0)
    ref = open_clip.CLIP(embed_dim=64, vision_cfg=open_clip.CLIPVisionCfg(layers=1, width=64, patch_size=8, image_size=32),
                         text_cfg=open_clip.CLIPTextCfg(width=64, heads=1, layers=1), quick_gelu=True)
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    model = from_clip(tmp_path / "clip.pt", num_frames=3, head="text", image_resolution=48)
    expected = resample_spatial(ref.state_dict()["visual.positional_embedding"], 6)
    assert torch.equal(model.state_dict()["visual.positional_embedding"], expected)
    assert model(torch.randn(1, 3, 3, 48, 48), tokenize_names(["a", "b"])).logits.shape == (1, 2)
    same = from_clip(tmp_path / "clip.pt", num_frames=3, head="text")
    assert torch.equal(same.state_dict()["visual.positional_embedding"], ref.state_dict()["visual.positional_embedding"])


def tokenize_names(names):
    from ila.models.clip import tokenize

    return tokenize(names)


def test_eval_and_fine_tune_at_another_frame_count(run, folders, tmp_path, capsys):
    code, out, err = run_cli(capsys, "eval", "--checkpoint", run, "--output", tmp_path / "e", "--set", "data.num_frames=8")
    assert code == 0 and out.startswith("8 videos"), err                  # the held-out part, at 8 frames
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["videos"] == 8
    code, out, err = run_cli(capsys, "train", "--config", "tiny", "--output", tmp_path / "ft", "--set",
                             f"train.init={run / 'best.pt'}", f"data.train_list={folders / 'train'}",
                             "data.num_frames=8", "train.epochs=1", "train.eval_every_epochs=0", *FAST)
    assert code == 0 and f"weights: {run / 'best.pt'} (train.init)" in out, err
    assert stored.read_checkpoint(tmp_path / "ft")["config"]["model"]["num_frames"] == 8


# ------------------------------------------------------------------------------------------- 2. long videos

@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    assert write_long_video(str(path), [0, 2, 4, 6, 1], 6.0, size=(48, 32), fps=8) == 30.0
    return path


def test_windows_over_a_long_video(run, long_video, tmp_path, capsys):
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, long_video, "--window", "4", "--stride", "3",
                             "--topk", "2", "--json", "--csv", tmp_path / "w.csv", "--timeline", tmp_path / "t.png")
    assert code == 0, err
    result = json.loads(out)[0]
    assert result["duration"] == 30.0
    spans = [(w["start"], w["end"]) for w in result["windows"]]
    assert spans == [(3.0 * k, 3.0 * k + 4) for k in range(9)] + [(26.0, 30.0)]   # the tail ends at the end
    assert all(len(w["predictions"]) == 2 for w in result["windows"])
    rows = list(csv.DictReader((tmp_path / "w.csv").open()))
    assert len(rows) == 20 and rows[0]["start"] == "0.0" and rows[0]["rank"] == "1"
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG" and f"wrote {tmp_path / 't.png'}" in err
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", run, long_video, "--window", "40")
    assert code == 0 and out.splitlines()[0].endswith("(30.0 s, 1 windows of 40 s every 40 s)")
    assert out.splitlines()[1].startswith("      0.00-   30.00 s  ")


def test_window_arguments_are_checked_first(run, long_video, capsys):
    for argv, message in [(["--window", "0"], "--window 0.0: give a window length"),
                          (["--stride", "2"], "--stride needs --window"),
                          (["--timeline", "t.png"], "--timeline needs --window"),
                          (["--window", "2", "--stride", "nan"], "--stride nan"),
                          (["--window", "1e-9"], "--window 1e-09: give at least 0.001 s"),
                          (["--window", "4", "--stride", "1e-7"], "--stride 1e-07: give at least 0.001 s")]:
        code, _, err = run_cli(capsys, "predict", "--checkpoint", run, long_video, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    # shorter than one frame of this video (8 fps): refused when the video is read, naming the minimum
    code, _, err = run_cli(capsys, "predict", "--checkpoint", run / "best.pt", long_video, "--window", "0.05")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--window 0.05 s is shorter than one frame of this video (0.125 s, 8 fps); use --window 0.125 or more" in err


def test_windows_follow_the_frame_timestamps(run, tmp_path, capsys):
    """A variable-frame-rate Matroska file declaring 25 fps: 10 frames over 0-9 s, then 250 frames over 10-20 s.
    Frame index / declared rate made it 10.4 s long, its first 5 s window holding 0-14.6 s."""
    from fractions import Fraction

    import av

    path, base = tmp_path / "vfr.mkv", Fraction(1, 1000)
    times = [float(k) for k in range(10)] + [10 + k / 25 for k in range(250)]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"bf": "0", "threads": "1"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.time_base = base
        for t in times:
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), int(8 * t), np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t / base)), base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, path, "--window", "5", "--json")
    result = json.loads(out)[0]
    assert code == 0 and result["duration"] == 20.0, err
    assert [(w["start"], w["end"]) for w in result["windows"]] == [(0, 5), (5, 10), (10, 15), (15, 20)]


# ------------------------------------------------------------------------------------------- predict errors

def test_predict_reports_every_bad_video_and_scores_the_rest(run, folders, tmp_path, capsys):
    bag = tmp_path / "bag" / "sub"
    bag.mkdir(parents=True)
    good = sorted((folders / "val").rglob("*.mp4"))[:2]
    for g in good:
        shutil.copy(g, bag / g.name)
    (bag / "broken.mp4").write_bytes(b"not a video")
    (bag / "empty.webm").write_bytes(b"")
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, tmp_path / "bag", tmp_path / "gone.mp4", "--json")
    results = {Path(r["video"]).name: r for r in json.loads(out)}
    assert code == 1 and set(results) == {g.name for g in good} | {"broken.mp4", "empty.webm", "gone.mp4"}
    assert "not a readable video" in results["broken.mp4"]["error"] and "empty file" in results["empty.webm"]["error"]
    assert results["gone.mp4"]["error"] == "no such file or folder"
    assert all("predictions" in results[g.name] for g in good)
    assert sum(line.startswith("ila predict: error: ") for line in err.splitlines()) == 3
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, tmp_path / "bag")
    assert code == 1 and out.count("\n  ") == 2 * 5 and "broken.mp4" not in out


def test_visualize_names_formats_and_refusals(run, folders, tmp_path, capsys):
    videos = sorted((folders / "val").rglob("*.mp4"))[:2]
    code, out, err = run_cli(capsys, "predict", "--checkpoint", run, *videos, "--visualize", f"{tmp_path / 'pics'}/", "--block", "0")
    assert code == 0 and sorted(os.listdir(tmp_path / "pics")) == sorted(f"{v.stem}.png" for v in videos)
    assert f"wrote {tmp_path / 'pics' / (videos[0].stem + '.png')}" in err
    code, _, err = run_cli(capsys, "predict", "--checkpoint", run, videos[0], "--visualize", tmp_path / "a.svg")
    assert code == 0 and (tmp_path / "a.svg").read_text().lstrip().startswith("<?xml")
    (tmp_path / "dir.png").mkdir()
    (tmp_path / "file").write_text("x")
    for target, block, message in [(tmp_path / "x.png", "9", "--block 9 is out of range"),
                                   (tmp_path / "noext", "0", "it has none"),
                                   (tmp_path / "x.docx", "0", ".docx is not one matplotlib writes"),
                                   (tmp_path / "dir.png", "0", "is a folder"),
                                   (tmp_path / "file" / "x.png", "0", "is a file")]:
        code, out, err = run_cli(capsys, "predict", "--checkpoint", run / "best.pt", videos[0], "--visualize", target, "--block", block)
        assert code == 2 and message in err and out == "" and len(err.strip().splitlines()) == 1, (target, err)


# ------------------------------------------------------------------------------------------- 4. configs

def test_yaml_paths_are_relative_to_the_file(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text("model:\n  preset: tiny\ndata:\n  train_list: ../videos\n"
                                               "  class_names: a,b\ntrain:\n  init: ViT-B-32:openai\n")
    monkeypatch.chdir("/")
    cfg = load_config(tmp_path / "cfg" / "run.yaml", ["data.val_list=rel/val.txt"])
    assert cfg.data.train_list == str(tmp_path / "videos") and cfg.data.val_list == "/rel/val.txt"
    assert cfg.data.class_names == "a,b" and cfg.train.init == "ViT-B-32:openai" and cfg.data.root == "/"


def test_presets_carry_their_recipe_and_config_show_prints_it(capsys):
    assert load_config("demo").train.lr == 5e-4 and load_config("DEMO").train.optimizer_groups == "uniform"
    release = load_config("ila-b32-8f-k400").train
    assert (release.lr, release.mixup, release.init) == (8e-6, 0.8, "auto")
    assert load_config("demo", ["train.lr=1e-3"]).train.lr == 1e-3
    # the demo's clips were random crops only: the preset carries that too, under what is given
    assert load_config("demo").data.recipe == "crop" and load_config("tiny").data.recipe == "release"
    assert load_config("demo", ["data.recipe=release"]).data.recipe == "release"
    assert load_config("ila-b32-8f-k400").data.recipe == "release"
    code, out, _ = run_cli(capsys, "config", "show", str(CONFIGS / "demo.yaml"), "--set", "train.epochs=3")
    shown = yaml.safe_load(out)
    assert code == 0 and shown["train"]["epochs"] == 3 and shown["model"]["preset"] == "demo"
    assert shown["data"]["train_list"] == str(CONFIGS.parent / "data" / "motion" / "train.txt")


@pytest.mark.parametrize("argv, message", [
    (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    (["config", "show", "dmeo"], "did you mean 'demo'?"),
    (["config", "show", "tiny", "--set", "train.eopchs=2"], "did you mean 'train.epochs'?"),
    (["config", "show", "tiny", "--set", "trian.lr=2"], "did you mean 'train.lr'?"),
    (["info", "ila-b16-8f-k4000"], "did you mean 'ila-b16-8f-k400'?"),
    (["train", "--config", "tiny", "--set", "train.init=missing/ViT-B-32.pt", "data.train_list=."],
     "ViT-B-32.pt: no such file or folder"),
])
def test_did_you_mean_and_missing_files(argv, message, capsys, folders, monkeypatch):
    monkeypatch.chdir(folders)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_clip_name_offline_fails_at_once_naming_the_file(folders, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(folders / "no-cache"))
    code, _, err = run_cli(capsys, "train", "--config", "ila-b32-8f-k400", "--set", f"data.train_list={folders / 'train'}",
                           *FAST)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no network" in err and "train.init=PATH/ViT-B-32.pt" in err


# ------------------------------------------------------------------------------------------- 6. command line

def test_version_help_examples_and_info(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"ila {__version__}"
    for command in ("info", "make-dataset", "config", "train", "eval", "predict", "convert", "demo"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        examples = text[text.index("examples:"):].strip().splitlines()[1:]
        assert 2 <= len(examples) <= 3 and all(e.strip().startswith("ila ") for e in examples), command
    code, out, _ = run_cli(capsys, "info", "ILA-B32-8F-K400")
    assert code == 0 and "paper: 81.3 % top-1" in out
    for flag in (["--frames", "16"], ["--temporal", "mean"]):
        code, out, _ = run_cli(capsys, "info", "ila-b32-8f-k400", *flag)
        assert code == 0 and "paper:" not in out


# ------------------------------------------------------------------------------------------- 7. tracking

def test_weights_and_biases_logging_offline(folders, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb", reason="the optional wandb extra (in the dev extra) is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    code, _, err = run_cli(capsys, "train", "--config", "tiny", "--output", tmp_path / "r", "--set",
                           f"data.train_list={folders / 'train'}", "data.val_split=0.25", "train.epochs=1",
                           "train.wandb=ila-test", "train.log_every_steps=1", *FAST)
    assert code == 0, err
    logs = list((tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs) == 1
    data = logs[0].read_bytes()                  # the run's records: metric names, config keys, the project
    for key in (b"cls_loss", b"align_loss", b"val_top1", b"optimizer_groups", b"ila-test"):
        assert key in data, key
