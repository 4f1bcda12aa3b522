"""`ila train / eval / predict / convert` end to end through the command line, and their one-line errors."""
import json
import os
from pathlib import Path

import pytest
import torch

from ila.cli import main
from ila.weights import checkpoint as stored

CONFIGS = Path(__file__).resolve().parents[1] / "configs"



def data_sets(root):
    return [f"data.root={root}", f"data.train_list={root}/train.txt", f"data.val_list={root}/val.txt",
            f"data.class_names={root}/classes.txt"]


@pytest.fixture(scope="module")
def run(motion, tmp_path_factory):
    """A tiny model trained for one epoch by `ila train`."""
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--config", str(CONFIGS / "tiny.yaml"), "--output", str(out),
                 "--set", *data_sets(motion), "train.epochs=1"]) == 0
    return out


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_then_resume_for_more_epochs(run, capsys):
    assert (run / "config.yaml").is_file() and stored.read_checkpoint(run, resume=True)["train_state"]["step"] == 2
    code, out, _ = run_cli(capsys, "train", "--resume", run, "--set", "train.epochs=2", "train.stop_at_step=3")
    assert code == 0 and "resuming at step 2" in out
    assert stored.read_checkpoint(run, resume=True)["train_state"]["step"] == 3


def test_eval_prints_and_writes_accuracy(run, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "eval", "--checkpoint", run, "--set", "eval.clips=2", "eval.crops=3",
                           "--output", tmp_path)
    assert code == 0 and "5 videos, 2 clip(s) x 3 crop(s): top1" in out
    assert json.loads((tmp_path / "metrics.json").read_text())["crops"] == 3


def test_predict_a_folder_as_json_and_draw_alignment(run, motion, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", run, motion / "val", "--topk", "3", "--json")
    assert code == 0
    results = json.loads(out)
    names = (motion / "classes.txt").read_text().splitlines()
    assert [Path(r["video"]).name for r in results] == sorted(os.listdir(motion / "val"))
    for r in results:
        probs = [p["probability"] for p in r["predictions"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
        assert all(p["class"] in names for p in r["predictions"])
    video = motion / "val" / sorted(os.listdir(motion / "val"))[0]
    code, out, _ = run_cli(capsys, "predict", "--checkpoint", run, video, "--topk", "2", "--visualize",
                           tmp_path / "align.png", "--block", "0")
    assert code == 0 and out.splitlines()[0] == str(video) and len(out.splitlines()) == 3
    assert (tmp_path / "align.png").read_bytes()[:4] == b"\x89PNG"


def test_convert_a_release_checkpoint_and_predict_new_classes(fixtures_dir, motion, tmp_path, capsys):
    out = tmp_path / "k400.pt"
    code, printed, _ = run_cli(capsys, "convert", os.path.join(fixtures_dir, "k400_tiny_release.pth"), out,
                               "--classes", "archery,bowling,juggling")
    assert code == 0 and "video-text head, 3 class names" in printed
    state = torch.load(out, weights_only=True)
    assert state["class_names"] == ["archery", "bowling", "juggling"] and state["config"]["model"]["head"] == "text"
    video = motion / "val" / sorted(os.listdir(motion / "val"))[0]
    code, printed, _ = run_cli(capsys, "predict", "--checkpoint", out, video, "--json")
    assert [p["class"] for p in json.loads(printed)[0]["predictions"]] != []
    (tmp_path / "new.txt").write_text("surfing\nskiing\n")                # zero-shot: any class list
    code, printed, _ = run_cli(capsys, "predict", "--checkpoint", out, video, "--json", "--classes", tmp_path / "new.txt")
    predictions = json.loads(printed)[0]["predictions"]
    assert code == 0 and sorted(p["class"] for p in predictions) == ["skiing", "surfing"]
    assert sum(p["probability"] for p in predictions) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "tiny", "--set", "train.epochs=zero"], "train.epochs='zero' is not allowed; use an integer"),
    (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
    (["train", "--set", "train.lr=1"], "give --config CONFIG"),
    (["train", "--config", "tiny", "--set", "data.train_list=nope.txt", "train.init=none"],
     "annotation file not found: "),                # the path, made absolute (saved configs work anywhere)
    (["eval", "--checkpoint", "missing.pt"], "missing.pt: no such file or folder"),
    (["convert", "missing.pth", "out.pt"], "not found: missing.pth"),
])
def test_mistakes_print_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"ila {argv[0]}: error: ")


def test_predict_mistakes_print_one_line(run, motion, tmp_path, capsys):
    video = motion / "val" / sorted(os.listdir(motion / "val"))[0]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    (tmp_path / "empty").mkdir()
    nine = ",".join(f"c{i}" for i in range(9))
    for argv, message in [
        ([tmp_path / "none.mp4"], "no such file or folder"),
        ([tmp_path / "empty"], "holds no video files"),
        ([broken], "broken.mp4"),
        ([video, "--visualize", tmp_path / "x.png", "--block", "7"], "--block 7 is out of range"),
        ([video, "--classes", nine], "classifier has 8 outputs but the --classes names 9"),
        ([video, "--topk", "0"], "--topk 0"),
    ]:
        code, _, err = run_cli(capsys, "predict", "--checkpoint", run / "best.pt", *argv)
        assert code == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    # a run directory stands for its best.pt, said in one line before the error
    code, _, err = run_cli(capsys, "predict", "--checkpoint", run, broken)
    assert code == 2 and err.splitlines()[0].startswith(f"{run}: using best.pt") and len(err.splitlines()) == 2
