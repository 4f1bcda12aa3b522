"""`ila features`: video, frame and text embeddings, checked against the model's own forward pass; bad files listed
and skipped; .safetensors / .npy outputs written atomically; two torchrun processes embed each video once."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ila
from ila.cli import main
from ila.config import load_config
from ila.data.annotations import Sample
from ila.engine.features import read_features, run_features
from ila.engine.loaders import video_dataset
from ila.errors import UserError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny classifier saved as a shareable folder (4 frames, 32 px, 8 classes)."""
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = ila.build_model(cfg.model).eval()
    folder = tmp_path_factory.mktemp("features") / "tiny"
    ila.save_pretrained(model, folder, [f"c{i}" for i in range(8)], config=cfg)
    return folder, model, cfg


def videos(motion):
    return [str(motion / "val" / f) for f in sorted(os.listdir(motion / "val"))]


def views(cfg, paths, clips):
    """The evaluation views of each video, read independently of `ila features`: (N, clips, T, 3, S, S)."""
    data = video_dataset(cfg, [Sample(p, 0) for p in paths], train=False, clips=clips, crops=1)
    return torch.stack([data[i]["video"] for i in range(len(paths))])


def test_video_embeddings_are_what_the_classifier_scores(tiny, motion, tmp_path, capsys):
    folder, model, cfg = tiny
    out = tmp_path / "emb.safetensors"
    assert main(["features", "--checkpoint", str(folder), str(motion / "val"), "--out", str(out), "--clips", "2",
                 "--batch-size", "2"]) == 0
    tensors, info = read_features(out)
    paths = videos(motion)
    assert info["videos"] == paths and info["skipped"] == [] and info["clips"] == 2 and info["per_frame"] is False
    emb = tensors["video_features"]
    assert emb.shape == (5, 64) and emb.dtype == torch.float32
    clips = views(cfg, paths, 2)
    with torch.no_grad():
        per_view = [model(clips[:, c]) for c in range(2)]       # the full forward pass, one view at a time
        scored = [model.head.classifier(F.normalize(emb_view, dim=-1)) for emb_view in
                  [model.head.mit(model.forward_features(clips[:, c])[0]) for c in range(2)]]
    for c in range(2):
        torch.testing.assert_close(scored[c], per_view[c].logits, rtol=0, atol=1e-5)
    single = [model.head.mit(model.forward_features(clips[:, c])[0]) for c in range(2)]
    torch.testing.assert_close(emb, (single[0] + single[1]) / 2, rtol=0, atol=1e-5)
    assert "5 video(s), 0 text(s) ->" in capsys.readouterr().out


def test_per_frame_and_text_embeddings_of_a_text_head(fixtures_dir, motion, tmp_path):
    release = os.path.join(fixtures_dir, "k400_tiny_release.pth")
    model = ila.load_release(release).eval()
    folder = tmp_path / "k400"
    assert main(["convert", release, str(folder), "--classes", "kinetics400"]) == 0
    paths = videos(motion)[:3]
    result = run_features(folder, paths, tmp_path / "both.safetensors", text="juggling, surfing ,skiing")
    tensors, info = read_features(tmp_path / "both.safetensors")
    assert info["texts"] == ["juggling", "surfing", "skiing"] and info["videos"] == paths
    tokens = ila.tokenize(["juggling", "surfing", "skiing"])
    clips = views(result_cfg(folder), paths, 1)[:, 0]
    with torch.no_grad():
        # `ila features` embeds with the fused model (ila.fuse): the fused text tower's output, bit for bit,
        # and the unfused one's up to the fused model's rounding (LayerNorm folded into the next linear)
        fused = copy.deepcopy(model).fuse()
        torch.testing.assert_close(tensors["text_features"], fused.encode_text(tokens), rtol=0, atol=0)
        torch.testing.assert_close(tensors["text_features"], model.encode_text(tokens), rtol=0, atol=1e-5)
        out = model(clips, tokens)                    # the video-text head's own video feature
    torch.testing.assert_close(tensors["video_features"], out.video_features, rtol=0, atol=1e-5)
    assert result["tensors"]["video_features"].shape == (3, model.cfg.embed_dim)
    run_features(folder, paths, tmp_path / "frames.npy", per_frame=True)
    frames = np.load(tmp_path / "frames.npy", allow_pickle=False)
    info = json.loads((tmp_path / "frames.json").read_text())
    assert frames.shape == (3, model.cfg.num_frames, model.cfg.embed_dim) and info["videos"] == paths
    with torch.no_grad():
        expected = model.forward_features(clips)[0]
    np.testing.assert_allclose(frames, expected.numpy(), rtol=0, atol=1e-5)
    run_features(folder, [], tmp_path / "text.npy", text_file="kinetics400")
    assert np.load(tmp_path / "text.npy").shape == (400, model.cfg.embed_dim)


def result_cfg(folder):
    from ila import load_checkpoint

    return load_checkpoint(folder)[1]


def test_bad_files_are_listed_and_skipped_and_lists_are_read(tiny, motion, tmp_path, capsys):
    folder = tiny[0]
    paths = videos(motion)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    (tmp_path / "empty.mp4").write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{paths[1]} 3\nbroken.mp4 0\n\n# a comment\nmissing.mp4\n{paths[0]}\n")
    code = main(["features", "--checkpoint", str(folder), str(tmp_path / "empty.mp4"), str(listing), paths[4],
                 "--out", str(tmp_path / "f.safetensors")])
    captured = capsys.readouterr()
    assert code == 0
    tensors, info = read_features(tmp_path / "f.safetensors")
    assert info["videos"] == [paths[1], paths[0], paths[4]] and tensors["video_features"].shape == (3, 64)
    assert [s["path"] for s in info["skipped"]] == [str(tmp_path / "empty.mp4"), str(tmp_path / "broken.mp4"),
                                                    "missing.mp4"]
    assert "skipped 3 unreadable video(s):" in captured.err and "empty file (0 bytes)" in captured.err
    listed, _ = read_features(tmp_path / "f.safetensors")
    assert main(["features", "--checkpoint", str(folder), paths[0], "--out", str(tmp_path / "one.safetensors")]) == 0
    torch.testing.assert_close(read_features(tmp_path / "one.safetensors")[0]["video_features"][0],
                               listed["video_features"][1], rtol=0, atol=1e-6)


def test_mistakes_are_one_line_and_keep_what_was_written(tiny, motion, tmp_path, capsys):
    folder = tiny[0]
    out = tmp_path / "keep.safetensors"
    out.write_bytes(b"earlier results")
    (tmp_path / "broken.mp4").write_bytes(b"junk")
    for argv, message in [
        ([str(tmp_path / "broken.mp4")], "none of the 1 video(s) could be read"),
        ([videos(motion)[0], "--text", "a,b"], "this model has a classifier head and no text tower"),
        ([], "give videos, folders or list files to embed"),
        ([str(tmp_path / "nope.mp4")], "nope.mp4: no such file or folder"),
        ([videos(motion)[0], "--clips", "0"], "--clips 0"),
    ]:
        code = main(["features", "--checkpoint", str(folder), *argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    code = main(["features", "--checkpoint", str(folder), videos(motion)[0], "--out", str(tmp_path / "x.pt")])
    assert code == 2 and "end it with .safetensors" in capsys.readouterr().err
    assert out.read_bytes() == b"earlier results"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []     # no temporary files left


def test_two_processes_embed_each_video_once(tiny, motion, tmp_path):
    folder = tiny[0]
    (tmp_path / "broken.mp4").write_bytes(b"junk")
    inputs = [str(motion / "val"), str(tmp_path / "broken.mp4")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ila",
           "features", "--checkpoint", str(folder), *inputs, "--out", str(tmp_path / "ddp.safetensors"),
           "--batch-size", "2", "--clips", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main(["features", "--checkpoint", str(folder), *inputs, "--out", str(tmp_path / "one.safetensors"),
                 "--batch-size", "2", "--clips", "2"]) == 0
    ddp, ddp_info = read_features(tmp_path / "ddp.safetensors")
    one, one_info = read_features(tmp_path / "one.safetensors")
    assert ddp_info["videos"] == one_info["videos"] == videos(motion)       # 5 videos over 2 processes, each once
    assert ddp_info["skipped"] == one_info["skipped"] and len(ddp_info["skipped"]) == 1
    torch.testing.assert_close(ddp["video_features"], one["video_features"], rtol=0, atol=1e-5)
