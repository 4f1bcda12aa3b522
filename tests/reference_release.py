"""A literal, loop-based re-implementation of the release's computation, written from
`shared/docs/release-model.md` and working directly on release key names.

It shares no code with `ila.models`: attention runs through `F.multi_head_attention_forward` in the release's
(L, N, D) layout, masks are built point by point for each of the nine offsets, frames and pairs are visited in
Python loops. It is checked against the authors' golden outputs and then used to check `ila` on geometries the
fixtures do not cover (other grids, widths, depths, frame counts).
"""
import torch
import torch.nn.functional as F


def ln(x, sd, name):
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], 1e-5)


def lin(x, sd, name, bias=True):
    return F.linear(x, sd[name + ".weight"], sd.get(name + ".bias") if bias else None)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def mha(x, sd, name, heads, mask=None):
    """Self-attention on (L, N, D), as nn.MultiheadAttention computes it."""
    d = x.shape[-1]
    out, _ = F.multi_head_attention_forward(
        x, x, x, d, heads, sd[name + ".in_proj_weight"], sd[name + ".in_proj_bias"], None, None, False, 0.0,
        sd[name + ".out_proj.weight"], sd[name + ".out_proj.bias"], training=False, need_weights=False,
        attn_mask=mask)
    return out


def clip_block(x, sd, name, heads, mask=None):
    x = x + mha(ln(x, sd, name + ".ln_1"), sd, name + ".attn", heads, mask)
    return x + lin(quick_gelu(lin(ln(x, sd, name + ".ln_2"), sd, name + ".mlp.c_fc")), sd, name + ".mlp.c_proj")


def conv_bn(x, sd, conv, bn, train, groups=1, relu=True, pool=False):
    w = sd[conv + ".weight"]
    x = F.conv2d(x, w, sd[conv + ".bias"], padding=w.shape[-1] // 2, groups=groups)
    x = F.batch_norm(x, sd[bn + ".running_mean"].clone(), sd[bn + ".running_var"].clone(), sd[bn + ".weight"],
                     sd[bn + ".bias"], training=train, momentum=0.1, eps=1e-5)
    if pool:
        x = F.max_pool2d(x, 2)
    return F.relu(x) if relu else x


def mask_at(px, py, s):
    """The release's mask for one point: product of per-axis plateau-and-slope weights."""
    out = torch.zeros(s, s)
    for i in range(s):
        for j in range(s):
            wy, wx = 2 * i / (s - 1) - 1 - py, 2 * j / (s - 1) - 1 - px
            w = [1.0 if abs(d) <= 0.25 else max(0.0, 1 - 1.5 * (abs(d) - 0.25)) for d in (float(wy), float(wx))]
            out[i, j] = w[0] * w[1]
    return out


OFFSETS = [(0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1)]


def ila_module(a, sd, p, s, train, delta, separable):
    """a: (B, T, L, D) message features -> aligned (B,T,L,D), interactive (B,T,L,D), loss, raw points (B,4,T-1)."""
    b, t, length, d = a.shape
    maps = [a[:, k, 1:].transpose(1, 2).reshape(b, d, s, s) for k in range(t)]
    pairs = torch.stack([torch.cat([maps[k], maps[k + 1]], 1) for k in range(t - 1)], 1).flatten(0, 1)
    m = p + "message_attn."
    if separable:
        f = conv_bn(pairs, sd, m + "interactive_block.0.depthwise_conv.0", m + "interactive_block.0.depthwise_conv.1",
                    train, groups=2 * d)
        f = conv_bn(f, sd, m + "interactive_block.0.pointwise_conv.0", m + "interactive_block.0.pointwise_conv.1", train)
        f = conv_bn(f, sd, m + "interactive_block.1", m + "interactive_block.2", train)
    else:
        f = conv_bn(pairs, sd, m + "interactive_block.0", m + "interactive_block.1", train)
        f = conv_bn(f, sd, m + "interactive_block.3", m + "interactive_block.4", train)
    q = conv_bn(f, sd, m + "prediction_block.0", m + "prediction_block.1", train, pool=True)
    q = conv_bn(q, sd, m + "prediction_block.4", m + "prediction_block.5", train, pool=True)
    q = q.amax(dim=(2, 3)).view(b, t - 1, -1).transpose(1, 2)
    q = F.relu(F.conv1d(q, sd[m + "prediction_block.10.weight"], sd[m + "prediction_block.10.bias"], groups=2))
    raw = torch.tanh(F.conv1d(q, sd[m + "prediction_block.12.weight"], sd[m + "prediction_block.12.bias"], groups=2))
    pts = raw * 0.75
    offsets = OFFSETS if train else OFFSETS[:1]
    masked_prev, masked_cur, losses = [], [], []
    for bi in range(b):
        mp_b, mc_b = [], []
        for k in range(t - 1):
            x_p, y_p, x_c, y_c = pts[bi, :, k]
            mp = sum(mask_at(x_p + delta * ox, y_p + delta * oy, s) for ox, oy in offsets) / len(offsets)
            mc = sum(mask_at(x_c + delta * ox, y_c + delta * oy, s) for ox, oy in offsets) / len(offsets)
            mp_b.append(maps[k][bi] * mp)
            mc_b.append(maps[k + 1][bi] * mc)
            pv, cv = mp_b[-1].sum((1, 2)), mc_b[-1].sum((1, 2))
            losses.append(F.cosine_embedding_loss(F.normalize(pv, dim=0)[None], F.normalize(cv, dim=0)[None],
                                                  torch.ones(1)))
        masked_prev.append(mp_b)
        masked_cur.append(mc_b)
    loss = torch.stack(losses).mean()

    def per_frame(prev, cur, k):
        return prev[k] if k == 0 else cur[k - 1] if k == t - 1 else (prev[k] + cur[k - 1]) / 2

    aligned = torch.stack([torch.stack([per_frame(masked_prev[bi], masked_cur[bi], k) for k in range(t)])
                           for bi in range(b)])                                   # (B, T, D, S, S)
    aligned = torch.cat([a[:, :, :1], aligned.flatten(3).transpose(2, 3)], 2)
    half = f.shape[1] // 2
    fv = f.view(b, t - 1, -1, s, s)
    fp, fc = [fv[:, k, :half] for k in range(t - 1)], [fv[:, k, half:] for k in range(t - 1)]
    inter = torch.stack([per_frame(fp, fc, k) for k in range(t)], 2)          # (B, C/2, T, S, S)
    inter = F.conv3d(inter, sd[m + "conv.weight"], sd[m + "conv.bias"], padding=(1, 0, 0))
    inter = lin(inter.flatten(3).permute(0, 2, 3, 1), sd, m + "fc")           # (B, T, N, D)
    inter = torch.cat([a[:, :, :1], inter], 2)
    return aligned, inter, loss, raw


def reference_forward(sd, video, text=None, train=False, delta=0.2):
    """The release's outputs: logits, per-block losses, raw points (layers, B, 4, T-1), video features."""
    b, t = video.shape[:2]
    conv1 = sd["visual.conv1.weight"]
    d, patch = conv1.shape[0], conv1.shape[-1]
    x = F.conv2d(video.flatten(0, 1), conv1, stride=patch)
    s = x.shape[-1]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1) + sd["visual.positional_embedding"]
    x = ln(x, sd, "visual.ln_pre").transpose(0, 1)                                  # (L, BT, D)
    length = x.shape[0]
    layers = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
    separable = any("depthwise_conv" in k for k in sd)
    losses, raws = [], []
    for i in range(layers):
        p = f"visual.transformer.resblocks.{i}."
        a = ln(lin(x, sd, p + "message_fc"), sd, p + "message_ln").transpose(0, 1).reshape(b, t, length, d)
        aligned, inter, loss, raw = ila_module(a, sd, p, s, train, delta, separable)
        x = x + lin(aligned.reshape(b * t, length, d).transpose(0, 1), sd, p + "temporal_skip_align_fc")
        x = x + lin(inter.reshape(b * t, length, d).transpose(0, 1), sd, p + "temporal_skip_fc")
        x = clip_block(x, sd, p[:-1], d // 64)
        losses.append(loss)
        raws.append(raw)
    x = x.transpose(0, 1)                                                           # (BT, L, D)
    frames = (ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]).view(b, t, -1)
    e = frames.shape[-1]
    m = (frames + sd["mit.positional_embedding"]).transpose(0, 1)
    for j in range(len({k.split(".")[2] for k in sd if k.startswith("mit.resblocks.")})):
        m = clip_block(m, sd, f"mit.resblocks.{j}", e // 64)
    video_features = (m.transpose(0, 1) + frames).mean(1)
    if "mit.classify_head.0.weight" in sd:
        v = ln(video_features / video_features.norm(dim=-1, keepdim=True), sd, "mit.classify_head.0")
        logits = lin(v, sd, "mit.classify_head.2")
        return logits, torch.stack(losses), torch.stack(raws), logits
    # text tower
    w = sd["token_embedding.weight"]
    tx = (w[text] + sd["positional_embedding"]).transpose(0, 1)
    causal = torch.full((text.shape[1], text.shape[1]), float("-inf")).triu(1)
    for j in range(len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")})):
        tx = clip_block(tx, sd, f"transformer.resblocks.{j}", w.shape[1] // 64, causal)
    tx = ln(tx.transpose(0, 1), sd, "ln_final")
    text_features = tx[torch.arange(text.shape[0]), text.argmax(-1)] @ sd["text_projection"]
    # video-specific prompts
    patches = ln(x[:, 1:], sd, "prompts_visual_ln") @ sd["prompts_visual_proj"]
    visual = ln(patches.view(b, t, -1, e).mean(1), sd, "prompts_generator.norm")
    q0 = text_features.unsqueeze(0).expand(b, -1, -1)
    q = q0
    heads = e // 64
    for j in range(len({k.split(".")[2] for k in sd if k.startswith("prompts_generator.decoder.")})):
        g = f"prompts_generator.decoder.{j}."
        qq = lin(ln(q, sd, g + "norm1"), sd, g + "cross_attn.q_proj", bias=False)
        kk = lin(visual, sd, g + "cross_attn.k_proj", bias=False)
        vv = lin(visual, sd, g + "cross_attn.v_proj", bias=False)
        split = lambda z: z.view(b, z.shape[1], heads, e // heads).transpose(1, 2)  # noqa: E731
        attn = (split(qq) @ split(kk).transpose(-2, -1) * (e // heads) ** -0.5).softmax(-1)
        q = q + lin((attn @ split(vv)).transpose(1, 2).reshape(b, -1, e), sd, g + "cross_attn.proj")
        q = q + lin(quick_gelu(lin(ln(q, sd, g + "norm3"), sd, g + "mlp.0")), sd, g + "mlp.3")
    prompted = q0 + sd["prompts_generator.alpha"] * q
    v = video_features / video_features.norm(dim=-1, keepdim=True)
    tf = prompted / prompted.norm(dim=-1, keepdim=True)
    logits = torch.einsum("bd,bkd->bk", v, sd["logit_scale"].exp() * tf)
    return logits, torch.stack(losses), torch.stack(raws), video_features
