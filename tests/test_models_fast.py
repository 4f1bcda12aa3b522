"""The fast path: its switches, and its cached derived weights following every change of the weights they come from.

(That each setting computes the authors' outputs is in test_models_parity.py.)
"""
import pytest
import torch

from ila.errors import UserError
from ila.models.fast import FastPath, clear_cache
from ila.models.ila import ILAModel
from ila.presets import get_preset


def rel_err(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def model_with_live_branches(**kw):
    """A tiny model whose zero-initialised alignment outputs are given values, so every branch reaches the logits."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    for k, v in kw.items():
        setattr(cfg, k, v)
    model = ILAModel(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".temporal_skip" in name or "point_head.temporal.2" in name:
                p.normal_(0, 0.1)
    return model


TEXT = torch.randn(3, 64, generator=torch.Generator().manual_seed(1))


def logits(model, video, fast, grad=False):
    model.fast = fast
    text = TEXT.to(video.dtype) if model.text is not None else None
    with torch.enable_grad() if grad else torch.inference_mode():
        return model(video, text_features=text).logits


def test_parse_switches():
    assert FastPath.parse(True) == FastPath.on() and FastPath.parse(False) == FastPath.off()
    assert FastPath.parse("on") == FastPath.on() and FastPath.parse("off") == FastPath.off()
    assert FastPath.parse("attention,fold") == FastPath(True, False, True, False, False, False)
    assert FastPath.parse("on,-onednn") == FastPath(True, True, True, True, False, True)
    assert FastPath.parse({"pooling": True}) == FastPath(False, True, False, False, False, False)
    assert str(FastPath.on()) == "on" and str(FastPath.off()) == "off" and str(FastPath.parse("fold")) == "fold"
    assert not FastPath.off() and FastPath.parse("layout")
    with pytest.raises(UserError, match="unknown fast-path idea 'sdpa'; use on, off or any of attention"):
        FastPath.parse("on,-sdpa")


def test_model_sets_every_module():
    cfg = get_preset("tiny")
    cfg.head = "text"
    model = ILAModel(cfg)
    model.fast = "on,-attention"
    flags = {type(m).__name__: m.fast for m in model.modules() if isinstance(getattr(m, "fast", None), FastPath)}
    assert {"ILAModel", "Attention", "MLP", "ISTBlock", "ImplicitAlignment", "CrossAttention"} <= set(flags)
    assert all(f == FastPath.parse("on,-attention") for f in flags.values())


@pytest.mark.parametrize("head", ["text", "classifier"])
def test_cache_follows_weight_updates(head):
    """Derived weights (folded BatchNorm, scaled MLP weights, folded projection, packed oneDNN weights) are cached at
    inference; in-place updates, new values from load_state_dict and BatchNorm statistics must all reach them."""
    model = model_with_live_branches(head=head).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    before = logits(model, video, True)
    assert rel_err(before, logits(model, video, False)) < 1e-5
    block = model.visual.transformer.resblocks[0]
    changes = [block.mlp.c_fc.weight, block.mlp.c_proj.weight, block.attn.in_proj_weight, block.message_fc.weight,
               block.temporal_skip_fc.weight, block.alignment.token_proj.weight,
               block.alignment.interactive_block[0].weight, block.alignment.interactive_block[1].running_var]
    for tensor in changes:  # one at a time: each must change the fast path's output exactly as the straight path's
        with torch.no_grad():
            tensor.mul_(1.5)
        fast, straight = logits(model, video, True), logits(model, video, False)
        assert rel_err(fast, straight) < 1e-5, tensor.shape
    assert rel_err(fast, before) > 1e-3
    state = {k: v.clone() for k, v in model_with_live_branches(head=head).state_dict().items()}
    model.load_state_dict(state)
    assert rel_err(logits(model, video, True), before) < 1e-5


def test_cache_is_not_state_and_can_be_cleared():
    model = model_with_live_branches().eval()
    video = torch.randn(1, 4, 3, 32, 32)
    keys = set(model.state_dict())
    out = logits(model, video, True)
    assert any("_fast_cache" in m.__dict__ for m in model.modules())
    assert set(model.state_dict()) == keys
    clear_cache(model)
    assert not any("_fast_cache" in m.__dict__ for m in model.modules())
    assert torch.equal(logits(model, video, True), out)


def test_training_after_cached_inference():
    """Inference fills the cache (inside inference_mode); a training step that follows must still get exact
    gradients: frozen CLIP weights use their cached scaled copies, trainable ones are recomputed with autograd."""
    video = torch.randn(2, 4, 3, 32, 32)
    grads = []
    for fast in (False, True):
        model = model_with_live_branches(freeze_clip=True)
        model.eval()
        logits(model, video, fast)
        model.train()
        out = model(video)
        (out.logits.square().sum() + out.align_losses.sum()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(".message_fc." in n for n in grads[0])
    assert not any(n.startswith("visual.") and ".mlp." in n for n in grads[0])  # frozen: MLP weights from the cache
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


def test_other_dtype_and_full_finetuning_gradients():
    model = model_with_live_branches().eval()
    video = torch.randn(1, 4, 3, 32, 32)
    logits(model, video, True)  # cache float32 weights
    model.double()
    out64 = logits(model, video.double(), True)
    assert out64.dtype == torch.float64
    assert rel_err(out64, logits(model, video.double(), False)) < 1e-12
    model.float().train()
    model.set_trainable(full_finetune=True)
    grads = []
    for fast in (False, True):
        model.zero_grad()
        out = logits(model, video, fast, grad=True)
        out.square().sum().backward()
        grads.append(model.visual.transformer.resblocks[1].mlp.c_fc.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_compiled_fast_path_gives_the_same_outputs():
    """torch.compile (an option for GPUs: train.compile, benchmarks/model_speed.py --compile) traces the fast path:
    the weight cache steps aside under the compiler, which folds and fuses by itself."""
    model = model_with_live_branches(head="text").eval()
    video = torch.randn(2, 4, 3, 32, 32)
    eager = logits(model, video, False)
    compiled = torch.compile(model)
    model.fast = True
    with torch.no_grad():
        out = compiled(video, text_features=TEXT).logits
    assert rel_err(out, eager) < 1e-5


def test_flop_counter_sees_the_fused_linears():
    """oneDNN's fused linears are invisible to torch's FLOP counter, so they step aside while one is counting."""
    from torch.utils.flop_counter import FlopCounterMode

    model = model_with_live_branches().eval()
    video = torch.randn(1, 4, 3, 32, 32)
    counts = []
    for fast in ("on", "on,-onednn"):
        logits(model, video, fast)  # derived weights are computed (and counted) once: count a later call
        counter = FlopCounterMode(display=False)
        with counter:
            logits(model, video, fast)
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize("temporal", ["ila", "mean", "attention", "joint"])
def test_class_token_only_last_block_gives_the_same_outputs(temporal):
    """With a classifier head the last block computes the class tokens alone: same logits, losses and gradients
    for every temporal variant, also through gradient checkpointing; forward_features still gives all tokens."""
    model = model_with_live_branches(head="classifier", temporal=temporal)
    video = torch.randn(2, 4, 3, 32, 32)
    outs = []
    for fast in ("on", "on,-class_token"):
        model.fast = fast
        model.zero_grad()
        model.visual.transformer.grad_checkpointing = True
        model.train()
        out = model(video)
        (out.logits.square().sum() + out.align_losses.sum()).backward()
        grad = model.visual.transformer.resblocks[-1].attn.in_proj_weight.grad
        outs.append((out.logits.detach(), out.align_losses.detach(), grad.clone()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())
    model.eval()
    with torch.no_grad():
        frames, patches, _, _ = model.forward_features(video)
    assert patches.shape[2] == model.visual.grid ** 2
