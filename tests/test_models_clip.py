"""CLIP towers: equal to open_clip for the same weights; weights read from every supported file form."""
import open_clip
import pytest
import torch

from ila.errors import UserError
from ila.models.clip import build_clip_towers, clip_geometry, clip_to_ila_keys, tokenize
from ila.weights.clip import read_clip_weights
from ila.models.config import ModelConfig
from ila import from_clip


def tiny_open_clip(quick_gelu=True):
    torch.manual_seed(0)
    vision = open_clip.CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32)
    text = open_clip.CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=1, layers=2)
    model = open_clip.CLIP(embed_dim=64, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()
    with torch.no_grad():  # every weight random, not only the initialised ones
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return model


def ila_towers(state, quick_gelu=True):
    cfg = ModelConfig(**clip_geometry(state))
    visual, text = build_clip_towers(cfg, quick_gelu=quick_gelu)
    mapped = clip_to_ila_keys(state)
    visual.load_state_dict({k[7:]: v for k, v in mapped.items() if k.startswith("visual.")})
    text.load_state_dict({k[5:]: v for k, v in mapped.items() if k.startswith("text.")})
    return visual.eval(), text.eval()


@pytest.mark.parametrize("quick_gelu", [True, False])
def test_towers_equal_open_clip(quick_gelu):
    ref = tiny_open_clip(quick_gelu)
    visual, text = ila_towers(ref.state_dict(), quick_gelu)
    images = torch.randn(3, 3, 32, 32)
    tokens = tokenize(["a dog", "pushing something from left to right", ""])
    with torch.no_grad():
        assert (visual(images) - ref.encode_image(images)).abs().max() <= 1e-5
        assert (text(tokens) - ref.encode_text(tokens)).abs().max() <= 1e-5


def test_geometry_read_from_weights():
    for name, geom in [("ViT-B-32", (768, 12, 32, 224, 512)), ("ViT-L-14-336", (1024, 24, 14, 336, 768))]:
        with torch.device("meta"):
            state = open_clip.CLIP(**open_clip.get_model_config(name)).state_dict()
        g = clip_geometry(state)
        assert (g["vision_width"], g["vision_layers"], g["vision_patch_size"], g["image_resolution"],
                g["embed_dim"]) == geom
        assert g["transformer_layers"] == 12 and g["context_length"] == 77


def test_tokenizer_is_clip_bpe():
    tokens = tokenize(["hello world"])
    assert tokens.shape == (1, 77)
    assert tokens[0, :4].tolist() == [49406, 3306, 1002, 49407]  # <start> hello world <end>


def test_reads_plain_torchscript_and_open_clip_files(tmp_path):
    ref = tiny_open_clip()
    state = ref.state_dict()
    torch.save(state, tmp_path / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "open_clip.pt")
    traced = torch.jit.trace_module(ref, {"encode_image": torch.randn(1, 3, 32, 32)}, check_trace=False)
    traced.save(str(tmp_path / "openai_jit.pt"))
    for name in ["plain.pt", "open_clip.pt", "openai_jit.pt"]:
        loaded = read_clip_weights(tmp_path / name)
        for k, v in state.items():
            if torch.is_floating_point(v):
                assert torch.equal(loaded[k], v), (name, k)


def test_from_clip_keeps_clip_behaviour_at_start(tmp_path):
    """ILA starts as CLIP: zero-initialised skip projections leave every frame's embedding unchanged."""
    ref = tiny_open_clip()
    torch.save(ref.state_dict(), tmp_path / "clip.pt")
    model = from_clip(tmp_path / "clip.pt", num_frames=3, head="text").eval()
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        frames, _, _, _ = model.forward_features(video)
        expected = ref.encode_image(video.flatten(0, 1)).view(2, 3, -1)
    assert (frames - expected).abs().max() <= 1e-5
    assert not any(p.requires_grad for p in model.visual.conv1.parameters())


def test_pretrained_name_offline_says_which_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="pass the weights file"):
        read_clip_weights("ViT-B-32:openai")


def test_unreadable_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read CLIP weights"):
        read_clip_weights(bad)
