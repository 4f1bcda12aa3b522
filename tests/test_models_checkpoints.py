"""Checkpoints: release containers load safely without yacs; pickled code is refused; ila's own checkpoints
load with weights_only=True and carry their config."""
import importlib.util
import os
import pickle

import pytest
import torch

import ila
from ila.config import load_config
from ila.engine.checkpoint import save_checkpoint
from ila.errors import UserError
from ila import load_release
from ila.safe_load import load as safe_load


def test_release_container_needs_no_yacs(fixtures_dir):
    assert importlib.util.find_spec("yacs") is None  # yacs is not installed, and not needed
    state = safe_load(os.path.join(fixtures_dir, "k400_tiny_release.pth"))
    assert set(state) == {"model", "optimizer", "lr_scheduler", "max_accuracy", "epoch", "config"}
    assert isinstance(state["config"], dict)
    model = load_release(os.path.join(fixtures_dir, "k400_tiny_release.pth"))
    assert model.cfg.head == "text" and model.cfg.interactive_block == "separable"


class _Payload:
    """Unpickling this would create a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    victim = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "config": _Payload(str(victim))}, evil)
    with pytest.raises(UserError, match="refusing to load") as err:
        load_release(evil)
    assert "\n" not in str(err.value)
    assert not victim.exists()
    torch.load(evil, weights_only=False)  # proof that the payload is live
    assert victim.exists()


def test_pickle_protocol_payload_outside_torch_is_refused(tmp_path):
    victim = tmp_path / "pwned2"
    evil = tmp_path / "evil2.pth"
    with open(evil, "wb") as f:
        pickle.dump(_Payload(str(victim)), f, protocol=2)
    with pytest.raises(UserError):
        load_release(evil)
    assert not victim.exists()
    with open(evil, "rb") as f:  # proof that the payload is live
        pickle.load(f)
    assert victim.exists()


def test_ila_checkpoint_round_trip(tmp_path):
    cfg = load_config("tiny")
    model = ila.build_model(cfg.model).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, [f"c{i}" for i in range(8)])
    raw = torch.load(path, weights_only=True)  # plain tensors and Python values only
    assert raw["config"]["model"]["vision_width"] == 64
    loaded, loaded_cfg, names = ila.load_checkpoint(path)
    video = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(video).logits, model(video).logits)
    assert names[0] == "c0" and loaded_cfg.model == cfg.model


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_release(tmp_path / "nope.pth")
