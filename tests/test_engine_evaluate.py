"""Evaluation: metrics by hand, multi-view averaging, the release's BatchNorm quirk, and the files `ila eval` writes."""
import csv
import hashlib
import json

import numpy as np
import pytest
import torch

from ila.data.annotations import load_annotations
from ila.engine.checkpoint import save_checkpoint
from ila.engine.classes import ClassText
from ila.engine.distributed import Env
from ila.engine.evaluate import classification_metrics, run_eval
from ila.engine.loaders import video_dataset
from ila.engine.session import probabilities, run_videos
from ila.models import build_model
from ila.weights import weights_sha256
from test_engine_train import tiny



def test_metrics_by_hand():
    scores = torch.tensor([[.7, .2, .1, 0, 0, 0],      # class 0, right
                           [.1, .2, .3, .4, 0, 0],     # class 0, wrong (rank 4: in top-5)
                           [.1, .6, .3, 0, 0, 0],      # class 1, right
                           [.05, .04, .01, .1, .2, .6]])  # class 2, wrong (rank 6: not in top-5)
    m = classification_metrics(scores, torch.tensor([0, 0, 1, 2]))
    assert m["top1"] == 50.0 and m["top5"] == 75.0
    np.testing.assert_array_equal(m["counts"], [2, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(m["per_class"][:3], [50.0, 100.0, 0.0])
    assert np.isnan(m["per_class"][3:]).all() and m["mean_class_acc"] == pytest.approx(50.0)
    assert m["confusion"][0].tolist() == [1, 0, 0, 1, 0, 0] and m["confusion"].sum() == 4


def ila_model():
    """The tiny ILA model with every weight perturbed (ILA's output projections start at zero, which would hide
    what the alignment branch computes)."""
    torch.manual_seed(0)
    model = build_model(tiny("x", "y").model).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_views_are_averaged_softmax_scores(motion):
    cfg = tiny(motion, "unused")
    samples = load_annotations(str(motion / "val.txt"), root=str(motion))[:3]
    dataset = video_dataset(cfg, samples, train=False, clips=2, crops=3)
    dataset.bad_file_policy = "mark"
    model = ila_model()
    _, scores, labels, _ = run_videos(dataset, lambda views: probabilities(model, ClassText(), views), Env(), 2, 0, 0,
                                      progress=False)
    for i in range(3):
        views = dataset[i]["video"]
        assert views.shape[0] == 6                                           # clips x crops
        with torch.no_grad():
            expected = model(views).logits.softmax(-1).mean(0)
        torch.testing.assert_close(scores[i], expected, rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [s.label for s in samples]


def test_release_bn_quirk_uses_batch_statistics_after_the_first_batch(motion):
    cfg = tiny(motion, "unused")
    samples = load_annotations(str(motion / "val.txt"), root=str(motion))
    dataset = video_dataset(cfg, samples, train=False)
    dataset.bad_file_policy = "mark"
    model = ila_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def scores(quirk):
        return run_videos(dataset, lambda views: probabilities(model, ClassText(), views), Env(), 2, 0, 0,
                          progress=False, release_bn_model=model if quirk else None)[1]
    proper, quirk = scores(False), scores(True)
    torch.testing.assert_close(quirk[:2], proper[:2])                        # first batch: proper eval mode
    assert not torch.allclose(quirk[2:], proper[2:], atol=1e-4)              # then BatchNorm on batch statistics
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # running stats restored
    assert not any(m.training for m in model.modules())


def test_ila_eval_writes_metrics_per_class_and_confusion(motion, tmp_path):
    cfg = tiny(motion, tmp_path)
    names = (motion / "classes.txt").read_text().splitlines()
    path = save_checkpoint(tmp_path / "model.pt", ila_model(), cfg, names)
    metrics = run_eval(path, ["eval.clips=2"])
    out = tmp_path / "eval"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "confusion.csv", "confusion.png", "metrics.json",
                                                     "per_class.csv", "per_class.png", "predictions.csv"]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["videos"] == 5 and saved["clips"] == 2 and saved["top1"] == pytest.approx(metrics["top1"])
    # which weights and which data the results came from
    assert saved["weights"]["sha256"] == weights_sha256(torch.load(path, weights_only=True)["model"])
    assert saved["data"]["list"] == cfg.data.val_list and saved["data"]["frames"] == cfg.data.num_frames
    assert saved["data"]["list_sha256"] == hashlib.sha256(open(cfg.data.val_list, "rb").read()).hexdigest()
    per_class = list(csv.DictReader(open(out / "per_class.csv")))
    assert [r["class"] for r in per_class] == names and sum(int(r["videos"]) for r in per_class) == 5
    confusion = list(csv.reader(open(out / "confusion.csv")))
    assert confusion[0][1:] == names and sum(int(v) for row in confusion[1:] for v in row[1:]) == 5
    predictions = list(csv.DictReader(open(out / "predictions.csv")))
    right = sum(r["label"] == r["predicted"] for r in predictions)
    assert saved["top1"] == pytest.approx(100 * right / 5)
    assert all((out / f"{name}.png").read_bytes()[:4] == b"\x89PNG" for name in ("confusion", "per_class"))
