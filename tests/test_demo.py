"""`ila demo --quick`: the whole demo runs end to end on a tiny budget (the accuracy claim needs the full
budget and is measured, not tested: see the README's demo section)."""
from __future__ import annotations

import json
import os

import torch

from ila.cli import main
from ila.demo import QUICK, VARIANTS, prepare_data, eval_views, train_batch


def test_quick_demo_writes_table_pictures_and_checkpoints(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| model" in printed and "top-1 (%)" in printed and "GFLOPs/view" in printed
    for variant in VARIANTS:
        assert f"| {variant} " in printed
    assert "$ ila predict" in printed and f"Outputs in {out}" in printed
    for name in ("curves.png", "confusion.png", "points.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == set(VARIANTS)
    for r in results.values():
        assert 0 <= r["top1"] <= 100 and r["gflops_per_view"] > 0 and r["train_clips_per_s"] > 0
        assert os.path.isfile(r["checkpoint"])
    # ILA costs more than frame averaging; the baselines share its backbone and head
    assert results["ila"]["gflops_per_view"] > results["mean"]["gflops_per_view"]

    # a second run reuses the generated data
    prepare_data(out / "data", QUICK, seed=0)
    assert "reusing" in capsys.readouterr().out


def test_clip_sampling_shapes():
    videos = torch.randint(0, 256, (3, 16, 3, 36, 36), dtype=torch.uint8)
    clips = train_batch(videos, 8, 32, torch.Generator().manual_seed(0))
    assert clips.shape == (3, 8, 3, 32, 32) and clips.dtype == torch.float32
    views = eval_views(videos, 8, 2)
    assert views.shape == (3, 2, 8, 3, 36, 36)
    # two segment views of 16 frames take the even and the odd frames
    assert torch.equal(views[:, 0], videos[:, 0::2]) and torch.equal(views[:, 1], videos[:, 1::2])
