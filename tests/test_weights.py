"""One way from weights to a model: every kind of source through `ila.create_model`, the same model as the
thin wrappers give, in eval mode; the size check before any allocation; a reader registered from outside."""
import os

import pytest
import torch

import ila
from ila.config import load_config
from ila.engine.checkpoint import save_checkpoint
from ila.errors import UserError
from ila.hub import save_safetensors_file
from ila.models.clip import build_clip_towers  # noqa: F401 - the towers' own module stays importable alone
from ila.weights import SOURCES, WeightsRecord, read_weights, register_reader, weights_sha256
from ila.weights.sources import Probe

NAMES = [f"c{i}" for i in range(8)]


def trained_like(seed=0, *sets):
    """The tiny preset with every weight perturbed (the zero-initialised outputs would hide the video modules)."""
    torch.manual_seed(seed)
    cfg = load_config("tiny", list(sets))
    model = ila.build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval(), cfg


def logits(model, video):
    with torch.no_grad():
        return model(video).logits


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same weights as an ila checkpoint, a run directory, a pretrained folder and a .safetensors file."""
    root = tmp_path_factory.mktemp("sources")
    model, cfg = trained_like()
    save_checkpoint(root / "model.pt", model, cfg, NAMES)
    save_checkpoint(root / "run" / "checkpoint-00000004.pt", model, cfg, NAMES)
    ila.save_pretrained(model, root / "folder", NAMES, config=cfg)
    save_safetensors_file(model, root / "one.safetensors", NAMES, cfg)
    return root, model, cfg


@pytest.mark.parametrize("kind, where", [("checkpoint", "model.pt"), ("checkpoint", "run"),
                                         ("pretrained", "folder"), ("pretrained", "one.safetensors")])
def test_every_ila_source_builds_the_same_model_in_eval_mode(sources, kind, where):
    root, model, cfg = sources
    record = read_weights(root / where, quiet=True)
    assert record.kind == kind and record.class_names == NAMES and record.preprocessing.num_frames == 4
    assert record.sha256 == weights_sha256(model.state_dict())          # the file format changes no weight
    built = ila.create_model(weights=root / where)
    video = torch.randn(2, 4, 3, 32, 32)
    assert not built.training and built.class_names == NAMES and built.cfg == model.cfg
    assert torch.equal(logits(built, video), logits(model, video))
    # the thin wrappers give the same model, also in eval mode
    for wrapped in (ila.load_checkpoint(root / where)[0], ila.from_pretrained(root / where)):
        assert not wrapped.training and torch.equal(logits(wrapped, video), logits(model, video))


def test_a_preset_with_weights_must_agree_and_may_resample(sources):
    root, model, cfg = sources
    key = "visual.positional_embedding"
    same = ila.create_model("tiny", weights=root / "model.pt")
    assert torch.equal(same.state_dict()[key], model.state_dict()[key])
    larger = ila.create_model("tiny", weights=root / "model.pt", image_resolution=64)     # the grid resampled
    assert larger.cfg.image_resolution == 64 and larger.state_dict()[key].shape[0] == 1 + 8 * 8
    with pytest.raises(UserError, match="the weights have temporal='ila' but the config says model.temporal='mean'"):
        ila.create_model("tiny", weights=root / "model.pt", temporal="mean")
    with pytest.raises(UserError, match="weights must be a path"):
        ila.create_model("tiny", weights=3)


def test_tower_only_takes_the_image_tower(sources):
    root, model, _ = sources
    torch.manual_seed(5)
    tower = ila.create_model("tiny", weights=root / "folder", parts="tower")
    own, theirs = tower.state_dict(), model.state_dict()
    assert torch.equal(own["visual.conv1.weight"], theirs["visual.conv1.weight"])
    assert torch.equal(own["visual.transformer.resblocks.0.attn.in_proj_weight"],
                       theirs["visual.transformer.resblocks.0.attn.in_proj_weight"])
    assert not torch.equal(own["head.classifier.2.weight"], theirs["head.classifier.2.weight"])   # the head stays fresh
    assert tower.class_names == []


def test_release_and_clip_sources(fixtures_dir, tmp_path):
    release = os.path.join(fixtures_dir, "k400_tiny_release.pth")
    record = read_weights(release)
    assert record.kind == "release" and record.complete and record.model["head"] == "text"
    built = ila.create_model(weights=release)
    direct = ila.load_release(release)
    assert not built.training and not direct.training
    assert all(torch.equal(a, b) for a, b in zip(built.state_dict().values(), direct.state_dict().values()))
    # CLIP: the towers of the release, saved as a CLIP state dict; the video modules keep their initialisation
    clip = {k.removeprefix("text."): v for k, v in direct.state_dict().items()
            if k.startswith(("visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_",
                             "visual.proj", "text.", "logit_scale")) or
            (k.startswith("visual.transformer.") and ".alignment." not in k and ".temporal_" not in k)}
    torch.save(clip, tmp_path / "clip.pt")
    record = read_weights(tmp_path / "clip.pt")
    assert record.kind == "clip" and not record.complete and record.tower_only
    from_clip = ila.from_clip(tmp_path / "clip.pt", ila.get_preset("tiny"), num_frames=8, head="text")
    created = ila.create_model(weights=tmp_path / "clip.pt", num_frames=8)
    assert not from_clip.training and not created.training
    for key in ("visual.conv1.weight", "text.token_embedding.weight", "visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert torch.equal(from_clip.state_dict()[key], direct.state_dict()[key])
        assert torch.equal(created.state_dict()[key], direct.state_dict()[key])
    with pytest.raises(UserError, match="not a trained video model"):
        from ila.engine.session import InferenceSession

        InferenceSession(tmp_path / "clip.pt")


def test_train_init_takes_a_pretrained_folder(sources, motion, tmp_path):
    from ila.engine.train import initial_model

    root, model, _ = sources
    cfg = load_config("tiny", [f"train.init={root / 'folder'}"])
    start = initial_model(cfg)
    assert start.training                                 # the trainer's model trains
    assert all(torch.equal(a, b) for a, b in zip(start.state_dict().values(), model.state_dict().values()))


def test_the_size_check_comes_before_any_allocation(sources, tmp_path):
    """Weights that declare a model far larger than the bytes they hold are refused by counting the model on the
    meta device; nothing that size is ever allocated."""
    root, model, cfg = sources
    record = read_weights(root / "model.pt")
    huge = WeightsRecord("checkpoint", "huge.pt", record.state_dict, dict(record.model), config=None)
    big = load_config("tiny", ["model.vision_layers=64", "model.vision_width=4096"])   # ~51 GiB of float32
    with pytest.raises(UserError, match="huge.pt: its weights describe a model of"):
        ila.create_model(big, weights=huge, parts="tower")


def test_a_reader_registered_from_outside_is_one_more_source(sources, tmp_path):
    """A new kind of file needs one reader; create_model, the CLI and the session take it at once."""
    root, model, _ = sources
    path = tmp_path / "weights.mine"
    torch.save({"mine": True, "tensors": model.state_dict()}, path)

    def match(probe: Probe) -> bool:
        return probe.is_file(".mine")

    def read(probe: Probe, **_) -> WeightsRecord:
        state = probe.content()
        return WeightsRecord("mine", str(probe.text), state["tensors"], model.cfg.to_dict(), class_names=NAMES)

    register_reader("mine", match, "a test's own files")(read)
    try:
        built = ila.create_model(weights=path)
        video = torch.randn(1, 4, 3, 32, 32)
        assert torch.equal(logits(built, video), logits(model, video)) and built.class_names == NAMES
    finally:
        SOURCES.unregister("mine")
    with pytest.raises(UserError):
        ila.create_model(weights=path)                     # no reader for it any more: one line
