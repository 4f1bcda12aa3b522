"""Inference precision (`ila.fuse(model, precision=...)`, `--precision`, issue 24): fp32 stays exact; bf16 agrees
with fp32 on a tiny model and returns float32 outputs; the flag works end to end; a bad value is one line."""
import copy
import json

import pytest
import torch

import ila
from ila.cli import main
from ila.engine.features import read_features
from ila.engine.session import InferenceSession
from ila.errors import UserError
from ila.models.fuse import PRECISIONS, bf16_cpu_note, parse_precision
from test_engine_edges import checkpoint_file, error_line, ila_model

BF16_TOL = 2e-2  # max |bf16 - fp32| / max |fp32| of the logits (docs/guide/precision.md states it)


def fields(out):
    return [out.logits, out.align_losses, out.points, out.video_features]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def clip(model, batch=3, seed=0):
    cfg = model.cfg
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution, generator=g)


def test_fp32_is_the_default_and_bit_identical():
    model = ila_model()
    video = clip(model)
    with torch.no_grad():
        a = copy.deepcopy(model).fuse()(video)
        b = ila.fuse(copy.deepcopy(model), precision="fp32")(video)
    for x, y in zip(fields(a), fields(b)):
        assert x.dtype == torch.float32 and torch.equal(x, y)
    assert all(p.dtype == torch.float32 for p in ila.fuse(copy.deepcopy(model)).parameters())


def test_bf16_agrees_with_fp32_and_returns_float32():
    model = ila_model()
    video = clip(model, batch=6)
    with torch.no_grad():
        ref = copy.deepcopy(model).fuse()(video)
        fused = ila.fuse(copy.deepcopy(model), precision="bf16")
        out = fused(video)
    assert fused.visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.bfloat16    # the tower: bf16
    assert fused.visual.proj.dtype == fused.head.classifier[2].weight.dtype == torch.float32    # the head: fp32
    for got in fields(out):
        assert got.dtype == torch.float32
    assert rel_err(out.logits, ref.logits) < BF16_TOL
    assert torch.equal(out.logits.argmax(-1), ref.logits.argmax(-1))
    assert rel_err(out.points, ref.points) < 5e-2


def test_bf16_on_the_parity_fixtures(fixtures_dir):
    """The authors' golden logits (both variants, every weight random) within BF16_TOL in bf16, top-1 unchanged."""
    for name in ("k400_tiny.pt", "ssv2_tiny.pt"):
        fx = torch.load(f"{fixtures_dir}/{name}", weights_only=True)
        model = ila.load_release(fx["state_dict"]).fuse(precision="bf16")
        with torch.no_grad():
            out = model(fx["video"], fx["text"] if model.text is not None else None)
        expected = fx["eval"]["logits"]
        assert out.logits.dtype == torch.float32 and rel_err(out.logits, expected) < BF16_TOL, name
        assert torch.equal(out.logits.argmax(-1), expected.argmax(-1)), name


def test_bad_precisions_are_one_line():
    for bad in ("fp16", "BF16", "", "x" * 500, 8, 3.5, ["bf16"], "bf16\n"):
        with pytest.raises(UserError) as e:
            parse_precision(bad)
        assert "\n" not in str(e.value) and "fp32, bf16" in str(e.value) and len(str(e.value)) < 200
    with pytest.raises(UserError, match="int8 was measured slower than bf16"):
        ila.fuse(ila_model(), precision="int8")
    assert parse_precision(None) == "fp32" and tuple(PRECISIONS) == ("fp32", "bf16")


def test_a_cpu_without_bf16_units_is_named_in_one_line():
    assert bf16_cpu_note({"avx2", "avx512f", "avx512_bf16"}) is None
    assert bf16_cpu_note({"fp", "asimd", "bf16"}) is None           # Arm's bf16 extension
    note = bf16_cpu_note({"avx2", "avx512f"})
    assert "no bf16 units" in note and "\n" not in note


def test_session_in_bf16_predicts_what_fp32_predicts(motion, tmp_path):
    path = checkpoint_file(motion, tmp_path)
    videos = [str(motion / "val" / f"00000{i}.mp4") for i in range(5)]
    fp32 = InferenceSession(path)
    bf16 = InferenceSession(path, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    a = fp32.scores(fp32.samples(videos), progress=False).outputs
    b = bf16.scores(bf16.samples(videos), progress=False).outputs
    assert b.dtype == torch.float32 and torch.equal(a.argmax(-1), b.argmax(-1))
    assert (a - b).abs().max() < 1e-2                               # probabilities
    e = bf16.embeddings(bf16.samples(videos)).outputs
    assert e.dtype == torch.float32 and rel_err(e, fp32.embeddings(fp32.samples(videos)).outputs) < BF16_TOL


def test_precision_flag_end_to_end(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    video = str(motion / "val" / "000000.mp4")
    rows = {}
    for precision in ("fp32", "bf16"):
        assert main(["predict", "--checkpoint", str(path), video, "--json", "--precision", precision]) == 0
        rows[precision] = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [r["class"] for r in rows["bf16"]][:1] == [r["class"] for r in rows["fp32"]][:1]

    out = tmp_path / "f.safetensors"
    assert main(["features", "--checkpoint", str(path), video, "--out", str(out), "--precision", "bf16"]) == 0
    assert read_features(out)[0]["video_features"].dtype == torch.float32

    assert main(["eval", "--checkpoint", str(path), "--output", str(tmp_path / "ev"), "--precision", "bf16"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["videos"] == 5
    capsys.readouterr()

    for argv in (["predict", "--checkpoint", str(path), video],
                 ["eval", "--checkpoint", str(path)],
                 ["features", "--checkpoint", str(path), video, "--out", str(out)],
                 ["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]):
        with pytest.raises(SystemExit) as e:                        # argparse's choices: one line, exit 2
            main([*argv, "--precision", "int8"])
        assert e.value.code == 2, argv
        line = error_line(capsys.readouterr().err)
        assert "--precision" in line and "'fp32', 'bf16'" in line, line


def test_hub_export_refuses_a_precision(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    assert main(["export", "--checkpoint", str(path), "--format", "hub", "--out", str(tmp_path / "share"),
                 "--precision", "bf16"]) == 2
    assert "shares the trained float32 weights" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "share").exists()


def test_export_in_bf16_exported_is_checked_and_onnx_is_refused(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    assert main(["export", "--checkpoint", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                 "--precision", "bf16"]) == 2
    assert "onnxruntime's CPU kernels take no bfloat16" in error_line(capsys.readouterr().err)
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.onnx.json").exists()

    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", str(path), "--format", "exported", "--out", str(out),
                 "--precision", "bf16"]) == 0
    meta = json.loads((tmp_path / "m.pt2.json").read_text())
    assert meta["precision"] == "bf16" and meta["parity_error"] < 2e-2
    program = torch.export.load(str(out)).module()
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        reference = ila.fuse(ila.create_model(weights=str(path)), precision="bf16")(video).logits
    logits = program(video)[0]
    assert logits.dtype == torch.float32 and rel_err(logits, reference) < 2e-2


def test_pipeline_takes_the_precision(motion, tmp_path):
    path = checkpoint_file(motion, tmp_path)
    video = str(motion / "val" / "000001.mp4")
    fp32 = ila.pipeline(str(path), quiet=True)(video)
    bf16 = ila.pipeline(str(path), quiet=True, precision="bf16")
    assert bf16.session.precision == "bf16"
    assert bf16(video)[0]["predictions"][0]["class"] == fp32[0]["predictions"][0]["class"]
