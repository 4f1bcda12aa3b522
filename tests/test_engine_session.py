"""One inference session for eval, predict, features and export: inference-only data settings, one rule for
unreadable files and non-finite outputs, stdout left to the data, shareable folders never written into."""
import json
import os

import torch

import ila
from ila.cli import main
from ila.engine.checkpoint import save_checkpoint
from ila.engine.session import InferenceSession
from test_engine_edges import checkpoint_file, error_line, ila_model
from test_engine_train import tiny


def test_predict_json_on_a_memory_cache_checkpoint_prints_only_json(motion, tmp_path, capsys):
    """A checkpoint trained with data.cache=memory (configs/demo.yaml does) predicts without decoding anything
    into memory first, and with --json stdout holds the JSON alone."""
    cfg = tiny(motion, tmp_path, "data.cache=memory")
    names = (motion / "classes.txt").read_text().splitlines()
    path = save_checkpoint(tmp_path / "cached.pt", ila_model(), cfg, names)
    session = InferenceSession(path)
    assert session.cfg.data.cache == "none" and session.cfg.data.augment == "cpu"
    videos = [str(motion / "val" / v) for v in sorted(os.listdir(motion / "val"))]
    assert main(["predict", "--checkpoint", str(path), *videos, "--json", "--topk", "2"]) == 0
    out = capsys.readouterr().out
    results = json.loads(out)                     # nothing but the JSON on stdout
    assert [r["video"] for r in results] == videos
    # the same scores as the session gives in Python, and as eval scores the same videos
    scored = session.scores(session.samples(videos), progress=False)
    assert [p["class"] for p in results[0]["predictions"]] == [names[i] for i in scored.outputs[0].topk(2).indices]


def test_non_finite_outputs_are_refused_by_every_entry_point(motion, tmp_path, capsys):
    model = ila_model()
    with torch.no_grad():
        model.visual.ln_post.weight[0] = float("nan")        # every embedding and logit becomes NaN
    path = checkpoint_file(motion, tmp_path, model)
    video = str(motion / "val" / "000000.mp4")
    for argv in (["predict", "--checkpoint", str(path), video],
                 ["features", "--checkpoint", str(path), video, "--out", str(tmp_path / "f.safetensors")],
                 ["eval", "--checkpoint", str(path), "--output", str(tmp_path / "ev")]):
        assert main(argv) == 2, argv
        assert "not finite numbers" in error_line(capsys.readouterr().err), argv
    assert not (tmp_path / "f.safetensors").exists()


def test_evaluating_a_shareable_folder_writes_elsewhere(motion, tmp_path, capsys, monkeypatch):
    cfg = tiny(motion, tmp_path)
    names = (motion / "classes.txt").read_text().splitlines()
    model = ila_model()
    folder = tmp_path / "share"
    ila.save_pretrained(model, folder, names, config=cfg)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", str(folder), "--set", f"data.val_list={motion}/val.txt",
                 f"data.root={motion}"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    written = json.loads(next((tmp_path / "eval").rglob("metrics.json")).read_text())
    assert written["weights"]["sha256"] == ila.read_weights(folder).sha256 and written["videos"] == 5


def test_features_and_predict_share_the_unreadable_file_rule(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    good = str(motion / "val" / "000000.mp4")
    assert main(["predict", "--checkpoint", str(path), good, str(broken), "--json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert "predictions" in rows[0] and rows[1]["video"] == str(broken) and "not a readable video" in rows[1]["error"]
    assert main(["features", "--checkpoint", str(path), good, str(broken), "--out", str(tmp_path / "f.npy")]) == 0
    err = capsys.readouterr().err
    assert f"{broken}: not a readable video" in err
    info = json.loads((tmp_path / "f.json").read_text())
    assert info["videos"] == [good] and info["skipped"][0]["path"] == str(broken)
