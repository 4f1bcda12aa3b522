"""ila checkpoints: atomic, weights_only-loadable, self-describing; pruning; RNG state."""
import os
import random

import numpy as np
import pytest
import torch

import ila
from ila.config import load_config
from ila.engine import checkpoint as ckpt
from ila.weights import checkpoint as stored
from ila.atomic import atomic_path
from ila.errors import UserError
from ila.models import build_model


def tiny_model():
    torch.manual_seed(0)
    cfg = load_config("tiny", ["model.temporal=mean"])
    return build_model(cfg.model), cfg


def test_checkpoint_is_plain_and_rebuilds_the_model(tmp_path):
    model, cfg = tiny_model()
    path = ckpt.save_checkpoint(tmp_path / "m.pt", model, cfg, ["a", "b"])
    raw = torch.load(path, weights_only=True)            # no pickled code, nothing but data
    assert raw["format"] == stored.FORMAT and raw["class_names"] == ["a", "b"]
    assert raw["config"]["model"]["temporal"] == "mean" and raw["config"]["model"]["preset"] == "tiny"
    loaded, cfg2, names = ila.load_checkpoint(path)  # needs no other input
    assert cfg2 == cfg and names == ["a", "b"]
    video = torch.randn(2, 4, 3, 32, 32)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(video).logits, loaded(video).logits)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]


def test_keep_last_and_latest(tmp_path):
    model, cfg = tiny_model()
    for step in (3, 6, 9, 12):
        ckpt.save_step_checkpoint(tmp_path, step, 2, model, cfg, [], {"step": step})
    assert [p.name for p in stored.step_checkpoints(tmp_path)] == ["checkpoint-00000009.pt", "checkpoint-00000012.pt"]
    assert stored.latest_checkpoint(tmp_path).name == "checkpoint-00000012.pt"
    assert stored.read_checkpoint(tmp_path)["train_state"] == {"step": 12}   # no best.pt: the newest that loads


def test_a_run_directory_means_best_pt_where_it_exists_said_on_stderr(tmp_path, capsys):
    """Everywhere a run directory is given for inference (eval, predict, features, export, ila.create_model) it
    stands for its best.pt, else the newest checkpoint that loads; one line on stderr says which. Resuming takes
    the newest step checkpoint, which holds the training state."""
    model, cfg = tiny_model()
    ckpt.save_step_checkpoint(tmp_path, 4, 2, model, cfg, ["a"], {"step": 4})
    (tmp_path / "checkpoint-00000009.pt").write_bytes(b"cut short")         # newer, unreadable: skipped
    path, state = stored.run_checkpoint(tmp_path)
    assert path.name == "checkpoint-00000004.pt" and state["train_state"] == {"step": 4}
    err = capsys.readouterr().err
    assert "skipping unreadable checkpoint" in err and "no best.pt (no validation ran); using checkpoint-00000004.pt" in err
    ckpt.save_checkpoint(tmp_path / "best.pt", model, cfg, ["a"], metrics={"top1": 62.5, "epoch": 2, "step": 3})
    path, state = stored.run_checkpoint(tmp_path)
    assert path.name == "best.pt" and state["metrics"]["top1"] == 62.5
    assert capsys.readouterr().err.strip() == f"{tmp_path}: using best.pt (the best validation top-1, 62.50 % at epoch 2)"
    record = ila.read_weights(tmp_path, quiet=True)
    assert record.kind == "checkpoint" and record.path.name == "best.pt"
    loaded = ila.create_model(weights=tmp_path)
    assert not loaded.training and loaded.class_names == ["a"]


def test_mismatched_weights_and_foreign_files_are_user_errors(tmp_path):
    model, cfg = tiny_model()
    path = ckpt.save_checkpoint(tmp_path / "m.pt", model, cfg, [])
    with pytest.raises(UserError, match="the weights have vision_width=64 but the config says model.vision_width=128"):
        ila.load_checkpoint(path, ["model.vision_width=128"])
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not an ila checkpoint.*ila convert"):
        stored.read_checkpoint(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable ila checkpoint"):
        stored.read_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="does not exist"):
        stored.read_checkpoint(tmp_path / "missing.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no checkpoint"):
        stored.read_checkpoint(empty)


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = ckpt.rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
