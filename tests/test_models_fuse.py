"""`ila.fuse`: the inference rewrite computes the model's outputs, replaces (does not copy) weights, and refuses to
train. (That fused models give the authors' outputs on every fixture is in test_models_parity.py.)"""
import copy

import pytest
import torch
from torch import nn

import ila
from ila.engine.checkpoint import save_checkpoint
from ila.config import Config
from ila.errors import UserError
from ila.models.clip import Attention
from ila.models.fuse import FUSIONS, FusedConvReLU, FusedLinear, GroupedPointwise, parse_ablation
from ila.models.ila import ILAModel
from ila.presets import get_preset


def rel_err(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def model_with_live_branches(**kw):
    """A tiny model whose zero-initialised alignment outputs and BatchNorm statistics are given values, so every
    branch reaches the logits and every fold has something to fold."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    for k, v in kw.items():
        setattr(cfg, k, v)
    model = ILAModel(cfg)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if ".temporal_skip" in name or "point_head.temporal.2" in name:
                p.normal_(0, 0.1)
            elif name.endswith(("running_mean", "bn.bias")) or (".interactive_block." in name and p.ndim == 1
                                                              and "num_batches" not in name):
                p.add_(0.3 * torch.rand_like(p))
    return model


TEXT = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))


def logits(model, video, grad=False):
    text = TEXT if model.text is not None else None
    with torch.enable_grad() if grad else torch.inference_mode():
        return model(video, text_features=text).logits


def test_layer_norm_fold_and_grouped_pointwise_are_exact_alone():
    """The two new algebraic rewrites against the modules they replace, on random weights and inputs."""
    from ila.models.fuse import fold_layer_norm

    torch.manual_seed(3)
    ln, fc = nn.LayerNorm(16), nn.Linear(16, 8)
    nn.init.normal_(ln.weight, 1.0, 0.3)
    nn.init.normal_(ln.bias, 0.0, 0.3)
    x = torch.randn(5, 16)
    with torch.no_grad():
        want = fc(ln(x))
        plain = fold_layer_norm(ln, fc, "weight", "bias")
        assert rel_err(fc(plain(x)), want) < 1e-6 and not plain.elementwise_affine and plain.eps == ln.eps
    seq = nn.Sequential(nn.Conv1d(8, 4, 1, groups=2), nn.ReLU(True), nn.Conv1d(4, 4, 1, groups=2), nn.Tanh())
    x = torch.randn(3, 8, 5)
    with torch.inference_mode():
        assert rel_err(GroupedPointwise(seq)(x), seq(x)) < 1e-6
    with pytest.raises(ValueError, match="1x1"):
        GroupedPointwise(nn.Sequential(nn.Conv1d(8, 4, 3)))


def test_parse_ablation():
    assert parse_ablation(None) == parse_ablation(()) == ()
    assert parse_ablation("onednn, bn") == ("bn", "onednn")  # in FUSIONS order
    assert parse_ablation(["skip"]) == ("skip",)
    with pytest.raises(UserError, match="unknown fusion 'sdpa' to leave out; the fusions are bn, skip, quick_gelu"):
        parse_ablation("bn,sdpa")


@pytest.mark.parametrize("kw", [dict(head="text"), dict(head="classifier"), dict(head="text", quick_gelu=False),
                                dict(head="classifier", interactive_block="dense", mi_token="paper"),
                                dict(temporal="attention"), dict(temporal="mean"), dict(temporal="joint")],
                         ids=["text", "classifier", "gelu", "dense-paper", "attention", "mean", "joint"])
def test_fused_model_gives_the_same_outputs(kw):
    model = model_with_live_branches(**kw).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    before = logits(model, video)
    params = sum(p.numel() for p in model.parameters())
    assert ila.fuse(model) is model
    assert model.fused == FUSIONS and not model.training
    assert rel_err(logits(model, video), before) < 1e-5
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and nn.BatchNorm2d not in kinds and FusedLinear in kinds
    assert Attention not in kinds  # every attention's q/k/v projection on oneDNN (a FusedAttention)
    blocks = model.visual.transformer.resblocks
    assert all(not b.ln_1.elementwise_affine and not b.ln_2.elementwise_affine for b in blocks)  # folded
    if kw.get("temporal", "ila") == "ila":
        assert FusedConvReLU in kinds and GroupedPointwise in kinds and nn.Conv1d not in kinds
        assert all(w.is_contiguous(memory_format=torch.channels_last) for m in model.modules()
                   if isinstance(m, FusedConvReLU) for w in [m.weight])
        assert all(isinstance(b.temporal_skip_fc, nn.Identity) for b in model.visual.transformer.resblocks)
    assert sum(p.numel() for p in model.parameters()) <= params  # folded weights replace, never copy
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("keep", FUSIONS)
def test_each_fusion_alone_gives_the_same_outputs(keep):
    model = model_with_live_branches(head="classifier").eval()
    video = torch.randn(2, 4, 3, 32, 32)
    before = logits(model, video)
    model.fuse(ablation=[n for n in FUSIONS if n != keep])
    assert model.fused == (keep,)
    assert rel_err(logits(model, video), before) < 1e-5
    kinds = {type(m) for m in model.modules()}
    assert (nn.BatchNorm2d in kinds) == (keep != "bn") and (nn.Linear in kinds) == (keep != "onednn")
    assert (Attention in kinds) == (keep != "qkv") and (nn.Conv1d in kinds) == (keep != "point_head")
    affine = {m.elementwise_affine for b in model.visual.transformer.resblocks for m in (b.ln_1, b.ln_2)}
    assert affine == {keep != "ln"}


def test_fused_model_refuses_to_train_and_to_be_saved(tmp_path):
    model = model_with_live_branches().fuse()
    with pytest.raises(UserError, match="fused for inference"):
        model.train()
    with pytest.raises(UserError, match="already fused"):
        ila.fuse(model)
    with pytest.raises(UserError, match="fused for inference"):
        save_checkpoint(tmp_path / "c.pt", model, Config(), ["a"])
    assert not (tmp_path / "c.pt").exists()
    model.eval()  # eval stays allowed


def test_input_gradients_through_the_fused_model():
    """A fused model trains nothing, but gradients with respect to its input (saliency maps) stay exact: the
    oneDNN kernels step aside when the input needs a gradient."""
    model = model_with_live_branches().eval()
    fused = copy.deepcopy(model).fuse()
    grads = []
    for m in (model, fused):
        video = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(2)).requires_grad_()
        logits(m, video, grad=True)[:, 0].sum().backward()
        grads.append(video.grad)
    assert rel_err(grads[1], grads[0]) < 1e-4


def test_fused_model_follows_dtype_and_runs_under_autocast():
    model = model_with_live_branches().eval()
    video = torch.randn(1, 4, 3, 32, 32)
    fused = copy.deepcopy(model).fuse().double()
    # the folds were computed in float32, so their rounding (not the float64 arithmetic) sets the error
    assert rel_err(logits(fused, video.double()), logits(model.double(), video.double())) < 1e-6
    fused.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(fused, video)
    assert rel_err(out.float(), logits(model.float(), video)) < 0.1


def test_compiled_fused_model_gives_the_same_outputs():
    """torch.compile (a GPU option) traces the fused model: the oneDNN kernels step aside under the compiler."""
    model = model_with_live_branches(head="text").eval()
    video = torch.randn(2, 4, 3, 32, 32)
    eager = logits(model, video)
    compiled = torch.compile(model.fuse())
    with torch.no_grad():
        out = compiled(video, text_features=TEXT).logits
    assert rel_err(out, eager) < 1e-5


def test_flop_counter_sees_the_fused_linears():
    """oneDNN's fused kernels are invisible to torch's FLOP counter, so they step aside while one is counting."""
    from torch.utils.flop_counter import FlopCounterMode

    video = torch.randn(1, 4, 3, 32, 32)
    counts = []
    for ablation in ((), ("onednn",)):
        model = model_with_live_branches().fuse(ablation=ablation)
        counter = FlopCounterMode(display=False)
        with counter:
            logits(model, video)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("temporal", ["ila", "mean", "attention", "joint"])
def test_class_token_only_last_block_gives_the_same_outputs(temporal):
    """With a classifier head the last block computes the class tokens alone (in training too): the same logits
    and gradients as computing every token, also through gradient checkpointing; forward_features gives all."""
    model = model_with_live_branches(head="classifier", temporal=temporal)
    model.visual.transformer.grad_checkpointing = True
    video = torch.randn(2, 4, 3, 32, 32)
    outs = []
    for class_only in (True, False):
        model.zero_grad()
        frames, patches, losses, _ = model.forward_features(video, class_only)
        assert patches.shape[2] == (0 if class_only else model.visual.grid ** 2)
        out, _ = model.forward_head(frames, patches)
        (out.square().sum() + losses.sum()).backward()
        grad = model.visual.transformer.resblocks[-1].attn.in_proj_weight.grad
        outs.append((out.detach(), losses.detach(), grad.clone()))
    torch.testing.assert_close(model(video).logits, outs[0][0])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
