"""DDP: samplers that split work exactly, and `torchrun -m ila train / eval` on 2 CPU processes (gloo)
matching a single process with the same global batch."""
import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from ila.weights import checkpoint as stored
from ila.engine.distributed import Env, ShardSampler, TrainSampler
from ila.engine.evaluate import run_eval
from ila.engine.train import train
from test_engine_train import assert_same_weights, tiny


def test_train_sampler_splits_each_global_batch_across_processes():
    single = list(TrainSampler(23, 6, Env(), seed=3))
    ranks = [list(TrainSampler(23, 2, Env(rank=r, world=3), seed=3)) for r in range(3)]
    assert len(single) == 18 and all(len(r) == 6 for r in ranks)         # the incomplete last batch is dropped
    for step in range(3):
        union = sorted(i for r in ranks for i in r[step * 2:(step + 1) * 2])
        assert union == sorted(single[step * 6:(step + 1) * 6])
    resumed = TrainSampler(23, 2, Env(rank=1, world=3), seed=3)
    resumed.start(0, batches_done=2)
    assert list(resumed) == ranks[1][4:] and len(resumed) == 2
    assert len(list(TrainSampler(23, 2, Env(), seed=3, accumulation=3))) == 18   # 11 batches -> 3 whole steps
    other_epoch = TrainSampler(23, 6, Env(), seed=3)
    other_epoch.start(1)
    assert list(other_epoch) != single


def test_shard_sampler_gives_every_video_to_exactly_one_process():
    shards = [list(ShardSampler(7, Env(rank=r, world=3))) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7)) and [len(s) for s in shards] == [3, 2, 2]


def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ila", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done



def test_two_processes_train_and_evaluate_like_one(motion, tmp_path):
    # Divided space-time attention has no batch statistics, so per-process batches of 2 give the gradient of one
    # batch of 4. (ILA's alignment BatchNorm normalises per process, as in the release; train.sync_bn on GPUs.)
    # Mixup is off: it pairs clips within each process's batch.
    sets = ["model.temporal=attention", "train.mixup=0", "train.cutmix=0", "train.eval_every_epochs=1"]
    single = train(tiny(motion, tmp_path / "single", *sets, "train.batch_size=4"))
    args = [f"data.root={motion}", f"data.train_list={motion}/train.txt", f"data.val_list={motion}/val.txt",
            f"data.class_names={motion}/classes.txt", "data.workers=0", "device=cpu", "train.init=none",
            "train.lr=1e-3", "train.optimizer_groups=uniform", "train.warmup_epochs=1", "train.epochs=2",
            "eval.batch_size=4", "train.weight_decay=3e-3", *sets, "train.batch_size=2"]   # tiny()'s recipe
    torchrun("train", "--config", "tiny", "--output", str(tmp_path / "ddp"), "--set", *args)
    state = stored.read_checkpoint(tmp_path / "ddp", resume=True)
    assert state["train_state"]["world"] == 2 and len(state["train_state"]["rng"]) == 2
    assert_same_weights(weights_of(single), state["model"], exact=False)

    def val_rows(run):
        return [{k: v for k, v in json.loads(line).items() if k.startswith("val_")}
                for line in (run / "metrics.jsonl").read_text().splitlines() if "val_top1" in line]
    assert val_rows(tmp_path / "ddp") == val_rows(single)               # 5 videos over 2 processes, each once

    torchrun("eval", "--checkpoint", str(tmp_path / "ddp"), "--output", str(tmp_path / "ddp_eval"),
             "--set", "eval.clips=2", "eval.batch_size=2")
    run_eval(tmp_path / "ddp", ["eval.clips=2", "eval.batch_size=2"], output=tmp_path / "one_eval")
    rows = {name: list(csv.DictReader(open(tmp_path / name / "predictions.csv"))) for name in ("ddp_eval", "one_eval")}
    assert len(rows["ddp_eval"]) == 5 and len({r["path"] for r in rows["ddp_eval"]}) == 5
    assert [(r["path"], r["predicted"]) for r in rows["ddp_eval"]] == [(r["path"], r["predicted"]) for r in rows["one_eval"]]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("ddp_eval", "one_eval")]
    assert metrics[0]["videos"] == 5 and metrics[0]["top1"] == pytest.approx(metrics[1]["top1"])


def weights_of(run):
    return stored.read_checkpoint(run, resume=True)["model"]


def test_sync_bn_needs_gpus(motion, tmp_path):
    from ila.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(UserError, match="sync_bn=true needs GPUs"):
        train(tiny(motion, tmp_path / "run", "train.sync_bn=true"))
