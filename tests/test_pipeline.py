"""The front door: `ila.pipeline` gives exactly what `ila predict --json` prints, frames in memory are read as a
decoded file is, `ila.Processor` feeds a model the session's own clips, and CLIP weights with `temporal=mean` score
CLIP zero-shot (issue "The front door", point 1)."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ila
from ila.cli import main
from ila.data.decode import open_video
from ila.data.synthetic import render_clip, write_mp4
from ila.errors import UserError
from test_engine_edges import checkpoint_file, error_line


def predict_json(capsys, *argv) -> list[dict]:
    capsys.readouterr()
    code = main(["predict", *map(str, argv), "--json"])
    out = capsys.readouterr()
    assert code in (0, 1), out.err
    return json.loads(out.out)


@pytest.fixture
def ckpt(motion, tmp_path):
    return checkpoint_file(motion, tmp_path)


def write_wide(path, short: int):
    """An 11-frame video `short` x about `short * 4/3` pixels. At a model's test short side (256/224 * S) neither the
    decoder nor the transform resizes it, so the file and its decoded frames must give the same clips to the last
    bit (at other sizes a file is resized while decoding and an array by the transform: close, not equal)."""
    frames = render_clip(2, short, 11, np.random.default_rng(3), distractors=1, texture=0.5)
    frames = np.concatenate([frames, frames[:, :, :short // 6 * 2][:, :, ::-1]], axis=2)   # even sides (yuv420p)
    write_mp4(str(path), np.ascontiguousarray(frames))
    return path


@pytest.fixture
def wide_video(tmp_path):
    return write_wide(tmp_path / "wide.mp4", 36)        # 36 x 48: the tiny model's (32 px) test short side


def decoded(path) -> np.ndarray:
    with open_video(str(path)) as reader:
        return reader.read(range(reader.num_frames))


def test_the_pipeline_returns_what_predict_json_prints(ckpt, motion, capsys):
    classify = ila.pipeline(ckpt)
    one = str(motion / "val" / sorted(os.listdir(motion / "val"))[0])
    for inputs in ([one], [str(motion / "val")], [one, str(motion / "val"), str(motion / "nothing.mp4")]):
        printed = predict_json(capsys, "--checkpoint", ckpt, *inputs)
        got = classify(inputs if len(inputs) > 1 else inputs[0])
        assert got == printed                      # the same videos, classes and probabilities, in the same order
    assert got[-1] == {"video": str(motion / "nothing.mp4"), "error": "no such file or folder"}
    assert [r["video"] for r in got[:-1]] == [one] + sorted(str(motion / "val" / f) for f in os.listdir(motion / "val"))
    assert all(len(r["predictions"]) == 5 for r in got[:-1])
    assert classify(one, topk=2) == predict_json(capsys, "--model", ckpt, one, "--topk", "2")   # --model: an alias
    with pytest.raises(UserError, match="nothing.mp4: no such file or folder"):
        classify(str(motion / "nothing.mp4"))       # one input alone that cannot be read: as `ila predict` says
    with pytest.raises(UserError, match="topk=0"):
        classify(one, topk=0)
    url = "rtsp://camera.invalid/stream"              # a live stream: read alone, in windows (tests/test_streams.py)
    with pytest.raises(UserError, match="a live stream is read on its own"):
        classify([url, one])
    with pytest.raises(UserError, match="give window=SECONDS"):
        classify(url)


def test_frames_in_memory_are_read_as_the_decoded_file(ckpt, wide_video):
    classify = ila.pipeline(ckpt)
    frames = decoded(wide_video)
    from_file = classify(str(wide_video))
    assert from_file[0]["video"] == str(wide_video)
    for given in (frames, torch.from_numpy(frames)):
        assert classify(given) == [{**from_file[0], "video": "<array>"}]
    both = classify([frames, str(wide_video), frames[::-1].copy()])
    assert [r["video"] for r in both] == ["<array>", str(wide_video), "<array>"]
    assert both[0]["predictions"] == both[1]["predictions"] == from_file[0]["predictions"]
    # the session's own dataset, the processor and the pipeline's processor: the same views, bit for bit
    session = classify.session
    views = session.dataset(session.samples([str(wide_video)]))[0]["video"]
    for processor in (classify.processor, ila.Processor.from_pretrained(ckpt), ila.Processor(session.model.preprocessing),
                      ila.Processor(session.model.preprocessing.to_dict())):
        assert torch.equal(processor(str(wide_video)), views) and torch.equal(processor(frames), views)
    assert views.shape == (1, 4, 3, 32, 32)
    for bad, match in ((frames[..., 0], r"uint8 array \(T, H, W, 3\)"), (frames.astype(np.float32), "float32"),
                       ([[1, 2]], "not a list"), (frames[:0], r"\(0, 36, 48, 3\)")):
        with pytest.raises(UserError, match=match):
            classify(bad)


def test_the_processor_feeds_the_model_its_clips(ckpt, motion, wide_video):
    """`model(processor(video))` scores a video as the pipeline does; other geometries and views follow the record."""
    classify = ila.pipeline(ckpt, overrides=["eval.clips=2", "eval.crops=3"])
    processor = ila.Processor.from_pretrained(ckpt, overrides=["eval.clips=2", "eval.crops=3"])
    assert processor.preprocessing == classify.preprocessing and processor.preprocessing.test_crops == 3
    views = processor(str(wide_video))
    assert views.shape == (6, 4, 3, 32, 32)                  # clips x crops views of T frames
    with torch.no_grad():
        probs = classify.model(views).logits.softmax(-1).mean(0)
    top = classify(str(wide_video), topk=3)[0]["predictions"]
    assert [p["class"] for p in top] == [classify.class_names[i] for i in probs.topk(3).indices]
    assert all(abs(p["probability"] - float(q)) < 1e-6 for p, q in zip(top, probs.topk(3).values))
    small = processor(decoded(motion / "val" / sorted(os.listdir(motion / "val"))[0]))   # 32 px frames: resized
    assert small.shape == (6, 4, 3, 32, 32) and small.dtype == torch.float32
    with pytest.raises(UserError, match="missing.mp4"):
        processor(str(wide_video.parent / "missing.mp4"))


@pytest.fixture
def clip_file(fixtures_dir, tmp_path):
    """CLIP weights: the towers of the authors' tiny release (its video modules left out), saved as a CLIP state dict."""
    direct = ila.load_release(os.path.join(fixtures_dir, "k400_tiny_release.pth"))
    clip = {k.removeprefix("text."): v for k, v in direct.state_dict().items()
            if k.startswith(("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_",
                             "visual.proj", "text.", "logit_scale")) or
            (k.startswith("visual.transformer.") and not any(s in k for s in (".alignment.", ".temporal_", ".message_")))}
    torch.save(clip, tmp_path / "clip.pt")
    return tmp_path / "clip.pt"


def test_clip_weights_score_zero_shot_by_frame_averaging(clip_file, tmp_path, capsys):
    wide_video = write_wide(tmp_path / "wide64.mp4", 64)  # 64 x 84: three crops of the CLIP weights' 64 px
    names = ["moving left", "growing", "fading in"]
    classify = ila.pipeline(clip_file, temporal="mean", classes=names, overrides=["eval.crops=3"])
    cfg = classify.session.cfg
    assert (cfg.model.temporal, cfg.model.num_frames, cfg.data.input_size) == ("mean", 8, 64)   # the weights' size
    got = classify(str(wide_video), topk=3)
    assert got == predict_json(capsys, "--model", clip_file, "--temporal", "mean", "--classes", ",".join(names),
                               wide_video, "--topk", "3", "--set", "eval.crops=3")
    assert classify(decoded(wide_video), topk=3) == [{**got[0], "video": "<array>"}]
    # CLIP's own zero-shot score: the frames' mean embedding against the class names' text features
    plain = ila.create_model(weights=clip_file, temporal="mean", num_frames=8)
    views = classify.processor(str(wide_video))
    assert views.shape == (3, 8, 3, 64, 64)
    with torch.no_grad():
        frames = plain.forward_features(views)[0].mean(1)
        text = plain.encode_text(ila.tokenize(names))
        probs = (plain.logit_scale.exp() * F.normalize(frames, dim=-1) @ F.normalize(text, dim=-1).T).softmax(-1).mean(0)
    order = probs.argsort(descending=True).tolist()
    assert [p["class"] for p in got[0]["predictions"]] == [names[i] for i in order]
    assert all(abs(p["probability"] - float(probs[i])) < 1e-5 for p, i in zip(got[0]["predictions"], order))
    assert ila.Processor.from_pretrained(clip_file, ["eval.crops=3"]).preprocessing == classify.preprocessing


def test_clip_weights_with_untrained_modules_are_refused(clip_file, ckpt, wide_video, capsys):
    for variant in ("ila", "attention", "joint"):
        with pytest.raises(UserError, match=f"no trained temporal={variant} blocks.*train first.*temporal=mean"):
            ila.pipeline(clip_file, temporal=variant, classes=["a", "b"])
    with pytest.raises(UserError, match="not a trained video model.*--temporal mean"):
        ila.pipeline(clip_file, classes=["a", "b"])
    with pytest.raises(UserError, match="model.mit_layers=1 adds head modules"):
        ila.pipeline(clip_file, temporal="mean", classes=["a", "b"], overrides=["model.mit_layers=1"])
    with pytest.raises(UserError, match="carries no class names"):
        ila.pipeline(clip_file, temporal="mean")
    with pytest.raises(UserError, match="trained temporal=ila model, not temporal=mean"):
        ila.pipeline(ckpt, temporal="mean")
    assert ila.pipeline(ckpt, temporal="ila").session.cfg.model.temporal == "ila"
    # the command line: one line each, exit status 2
    capsys.readouterr()
    assert main(["predict", "--model", str(clip_file), "--temporal", "ila", "--classes", "a,b", str(wide_video)]) == 2
    assert "train first" in error_line(capsys.readouterr().err)
    for argv, match in ((["--model", clip_file, "--checkpoint", ckpt], "not allowed with argument"),
                        ([], "one of the arguments --checkpoint --model is required")):
        with pytest.raises(SystemExit) as stop:
            main(["predict", *map(str, argv), str(wide_video)])
        line = error_line(capsys.readouterr().err)
        assert stop.value.code == 2 and match in line, line
