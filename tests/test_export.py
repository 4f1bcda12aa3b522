"""`ila export`: ONNX (run with onnxruntime) and torch.export graphs against the eager PyTorch model."""
import json
import os

import pytest
import torch

import ila
from ila.cli import main
from ila.config import Config
from ila import load_checkpoint
from ila.engine.checkpoint import save_checkpoint
from ila.convert import convert_release
from ila.engine.onnx_export import export
from ila.models.ila import ILAModel
from ila.presets import get_preset

NAMES = ["archery", "bowling", "cooking"]


def rel_err(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def eager_logits(checkpoint, video):
    """The unfused model's logits for the checkpoint's class names (text heads: the names' text features)."""
    model, _, names = load_checkpoint(checkpoint)
    model.eval()
    with torch.no_grad():
        text = ila.tokenize(names) if model.text is not None else None
        return model(video, text).logits[:, :len(names)]


@pytest.fixture()
def k400(fixtures_dir, tmp_path_factory):
    """The authors' tiny Kinetics release (text head, separable trunk) as an ila checkpoint, and its clip."""
    path = tmp_path_factory.mktemp("k400") / "k400.pt"
    convert_release(os.path.join(fixtures_dir, "k400_tiny_release.pth"), path, classes=",".join(NAMES))
    return path, torch.load(os.path.join(fixtures_dir, "k400_tiny.pt"), weights_only=True)["video"]


def test_onnx_of_a_text_head_matches_pytorch_in_onnxruntime(k400, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    checkpoint, clip = k400
    out = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["ila"])
    pre = meta["preprocessing"]                  # the record checkpoints and pretrained folders carry, as they carry it
    assert meta["class_names"] == NAMES and pre["num_frames"] == clip.shape[1] and pre["input_size"] == clip.shape[-1]
    assert pre == torch.load(checkpoint, weights_only=True)["preprocessing"]
    assert json.loads((tmp_path / "model.onnx.json").read_text())["class_names"] == NAMES
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["video"]
    for video in (clip, torch.cat([clip, clip.flip(1), 0.5 * clip])):  # the batch is dynamic
        logits, probs = (torch.from_numpy(a) for a in session.run(["logits", "probs"], {"video": video.numpy()}))
        expected = eager_logits(checkpoint, video)
        assert logits.shape == (video.shape[0], 3) and expected.std() > 0.01
        assert rel_err(logits, expected) < 1e-4
        torch.testing.assert_close(probs, expected.softmax(-1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["onnx", "exported"])
def test_classifier_export_names_exactly_its_outputs(fmt, tmp_path, capsys):
    """A classifier exports with its class names; names that do not count its outputs are refused in one line
    (fewer would silently take the softmax over the first outputs)."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    wide = get_preset("tiny")
    save_checkpoint(tmp_path / "wide.pt", ILAModel(wide), Config(model=wide), [])
    assert wide.num_classes > len(NAMES)
    assert main(["export", "--checkpoint", str(tmp_path / "wide.pt"), "--format", fmt, "--out", str(tmp_path / "w"),
                 "--classes", ",".join(NAMES)]) == 2
    err = capsys.readouterr().err
    assert f"classifier has {wide.num_classes} outputs but the --classes names 3" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "w").exists()
    cfg = get_preset("tiny")
    cfg.num_classes = len(NAMES)
    model = ILAModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".temporal_skip" in name or "point_head.temporal.2" in name:
                p.normal_(0, 0.1)
    save_checkpoint(tmp_path / "c.pt", model, Config(model=cfg), NAMES)
    out = tmp_path / f"model.{fmt}"
    meta = export(tmp_path / "c.pt", out, fmt)
    assert meta["parity_error"] < 1e-4 and meta["class_names"] == NAMES and meta["head"] == "classifier"
    video = torch.randn(3, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution)
    if fmt == "exported":
        logits, probs = torch.export.load(out).module()(video)
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        logits, probs = (torch.from_numpy(a) for a in session.run(None, {"video": video.numpy()}))
    assert logits.shape == (3, 3)
    assert rel_err(logits, eager_logits(tmp_path / "c.pt", video)) < 1e-4
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))


def test_export_errors_are_one_line(k400, tmp_path, capsys):
    checkpoint, _ = k400
    cases = [(["--out", tmp_path], "is a folder"), (["--out", tmp_path / "m.onnx", "--frames", "3"],
                                                    "built for 8 frames"),
             (["--out", tmp_path / "m.onnx", "--checkpoint", tmp_path / "none.pt"], "none.pt: no such file or folder")]
    for extra, message in cases:
        argv = ["export", "--checkpoint", checkpoint, "--format", "onnx", *extra]
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()
