"""Trust in what ila writes: outputs never replace what they should not (links written through; FIFOs, sockets and
device nodes refused), a pretrained folder is exported all at once (a kill at any step leaves the old folder or the
new one), evaluations are never silently replaced and leave no lock with personal data, and a damaged resume state,
a full disk or a NaN best figure is one line."""
import collections
import errno
import json
import math
import os
import pathlib
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import ila
import ila.atomic as atomic
from ila.atomic import atomic_folder, output_file, write_text
from ila.cli import main
from ila.config import load_config
from ila.engine import checkpoint as ckpt
from ila.engine.checkpoint import save_checkpoint
from ila.engine.evaluate import run_eval
from ila.engine.runlock import LOCK_NAME, RunLock
from ila.engine.train import train
from ila.errors import UserError
from ila.hub import _write_weights
from ila.weights import checkpoint as stored
from ila.weights import weights_sha256
from test_engine_evaluate import ila_model
from test_engine_train import tiny

NAMES = [f"class {i}" for i in range(8)]


def one_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("ila ")]
    assert len(lines) == 1 and "Traceback" not in err and "internal error" not in err, err
    return lines[0]


def device_nodes(tmp_path) -> dict[str, Path]:
    """Character devices to write to: private copies of /dev/null and /dev/full when root (so that a bug could
    never replace the machine's own), else the machine's (which a user cannot replace anyway)."""
    if os.geteuid() != 0:
        return {"null": Path("/dev/null"), "full": Path("/dev/full")}
    nodes = {}
    for name, minor in (("null", 3), ("full", 7)):
        nodes[name] = tmp_path / f"dev-{name}"
        os.mknod(nodes[name], 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    return nodes


def is_char_device(path: Path) -> bool:
    return stat.S_ISCHR(os.lstat(path).st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name or p.name.startswith(".ila-staging"))


# ----------------------------------------------------------------------------------------- 1. what an output may be

def test_a_symlinked_output_is_written_through_to_its_target(tmp_path):
    target = tmp_path / "data" / "results.csv"
    target.parent.mkdir()
    target.write_text("old\n")
    os.chmod(target, 0o640)
    link = tmp_path / "results.csv"
    link.symlink_to(os.path.relpath(target, tmp_path))
    write_text(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n" and link.read_text() == "new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640                      # a replaced file keeps its mode
    assert leftovers(tmp_path) == [] and leftovers(target.parent) == []


def test_a_dangling_symlink_creates_the_file_it_names(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to("elsewhere/out.json")
    write_text(link, "{}\n")
    assert link.is_symlink() and (tmp_path / "elsewhere" / "out.json").read_text() == "{}\n"


def test_fifos_sockets_device_nodes_and_link_loops_are_refused_in_one_line(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "to-pipe").symlink_to("pipe")
    (tmp_path / "loop-a").symlink_to("loop-b")
    (tmp_path / "loop-b").symlink_to("loop-a")
    short = Path(tempfile.mkdtemp(prefix="ila", dir="/tmp"))                # socket paths are short
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(short / "s"))
        nodes = device_nodes(tmp_path)
        cases = {fifo: "FIFO", tmp_path / "to-pipe": "FIFO", short / "s": "socket",
                 nodes["null"]: "character device", nodes["full"]: "character device",
                 tmp_path / "loop-a": "loops"}
        for path, kind in cases.items():
            for attempt in (lambda: output_file(path, "--csv"), lambda: write_text(path, "x")):
                with pytest.raises(UserError) as e:
                    attempt()
                assert kind in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and stat.S_ISSOCK(os.lstat(short / "s").st_mode)
        assert all(is_char_device(nodes[n]) for n in nodes)
        assert leftovers(tmp_path) == [] and leftovers(short) == []
    finally:
        sock.close()
        shutil.rmtree(short, ignore_errors=True)


def test_graph_and_hub_exports_refuse_device_nodes_before_any_work(tmp_path, capsys, monkeypatch):
    nodes = device_nodes(tmp_path)
    model = ila.build_model(tiny("x", "y").model)
    path = save_checkpoint(tmp_path / "m.pt", model, tiny("x", "y"), [])
    monkeypatch.setattr("ila.engine.onnx_export.deployable", lambda *a, **k: pytest.fail("built the model"))
    for fmt, out in (("exported", nodes["full"]), ("onnx", nodes["null"]), ("hub", nodes["full"])):
        assert main(["export", "--checkpoint", str(path), "--format", fmt, "--out", str(out)]) == 2
        assert "character device" in one_line(capsys.readouterr().err) or fmt == "hub"
        assert is_char_device(out)
    fifo = tmp_path / "m.safetensors"
    os.mkfifo(fifo)
    assert main(["export", "--checkpoint", str(path), "--format", "hub", "--out", str(fifo)]) == 2
    assert "FIFO" in one_line(capsys.readouterr().err) and stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ----------------------------------------------------------------------------------------- 2. folders, all at once

def tiny_model(seed):
    torch.manual_seed(seed)
    cfg = load_config("tiny")
    return ila.build_model(cfg.model).eval(), cfg


def which(folder: Path, old, new) -> str:
    """'old' or 'new': the model the folder holds, entirely (weights, class names and card together)."""
    model = ila.from_pretrained(folder)
    state = {k: v for k, v in model.state_dict().items()}
    for label, (reference, names) in (("old", old), ("new", new)):
        if weights_sha256(state) == weights_sha256(reference.state_dict()):
            assert model.class_names == names, f"{label} weights with the other config.json"
            assert f"{names[0]}" in (folder / "README.md").read_text(), f"{label} weights with the other card"
            return label
    raise AssertionError("the folder holds neither model")


@pytest.fixture
def hub_clone(tmp_path):
    """A folder holding the old model and what a Hub clone keeps beside it."""
    folder = tmp_path / "tiny-ila"
    old = tiny_model(0)[0], ["old a", "old b"] + NAMES[2:]
    ila.save_pretrained(old[0], folder, old[1])
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return folder, old, (tiny_model(1)[0], ["new a", "new b"] + NAMES[2:])


def user_files_kept(folder: Path) -> bool:
    return (folder / ".gitattributes").is_file() and (folder / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"


def test_a_hub_export_into_an_existing_folder_keeps_the_other_files(hub_clone):
    folder, old, new = hub_clone
    ila.save_pretrained(new[0], folder, new[1])
    assert which(folder, old, new) == "new" and user_files_kept(folder)
    assert sorted(p.name for p in folder.iterdir()) == [".git", ".gitattributes", "README.md", "config.json",
                                                       "model.safetensors"]
    assert leftovers(folder.parent) == []


def count_steps(monkeypatch) -> list[str]:
    """Every step of an export that writes or moves something, in order (records them while the export runs)."""
    seen = []
    original = {"write_bytes": pathlib.Path.write_bytes, "write_text": pathlib.Path.write_text}
    monkeypatch.setattr(atomic, "_step", lambda name: seen.append(name))
    for name, fn in original.items():
        monkeypatch.setattr(pathlib.Path, name, lambda self, *a, _fn=fn, _n=name, **k: (seen.append(_n),
                                                                                      _fn(self, *a, **k))[1])
    return seen


def killed_at(k: int, folder: Path, new) -> int:
    """Export `new` into `folder` in a forked process that is killed (os._exit) just before its `k`-th step;
    returns the child's exit status (0: it finished before that step)."""
    pid = os.fork()
    if pid == 0:                                    # the child: no cleanup, no atexit, like a kill -9
        try:
            count = [0]

            def step(*_):
                count[0] += 1
                if count[0] == k:
                    os._exit(17)
            for name in ("write_bytes", "write_text"):
                fn = getattr(pathlib.Path, name)
                setattr(pathlib.Path, name, lambda self, *a, _fn=fn, **k: (step(), _fn(self, *a, **k))[1])
            atomic._step = step
            ila.save_pretrained(new[0], folder, new[1])
            os._exit(0)
        except BaseException:
            os._exit(3)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_killed_hub_export_leaves_the_old_folder_or_the_new_one_never_a_mix(hub_clone, monkeypatch):
    folder, old, new = hub_clone
    with monkeypatch.context() as m:              # how many steps an export takes (the folder is restored after)
        steps = count_steps(m)
        ila.save_pretrained(new[0], folder, new[1])
    assert {"write_bytes", "write_text", "exchange", "unlink", "move back", "rmdir"} <= set(steps), steps
    ila.save_pretrained(old[0], folder, old[1])
    seen = []
    for k in range(1, len(steps) + 2):
        code = killed_at(k, folder, new)
        assert code == (17 if k <= len(steps) else 0), (k, code)
        seen.append(which(folder, old, new))     # readable and whole right after the kill
        ila.save_pretrained(new[0], folder, new[1])   # the next export clears what the kill left
        assert which(folder, old, new) == "new" and user_files_kept(folder), k
        assert leftovers(folder.parent) == [] and leftovers(folder) == [], k
        ila.save_pretrained(old[0], folder, old[1])
    assert seen[0] == "old" and seen[-1] == "new" and seen == sorted(seen, key=["old", "new"].index), seen


@pytest.mark.parametrize("exchange", [True, False])
def test_a_failing_write_of_any_file_leaves_the_old_folder(hub_clone, monkeypatch, exchange):
    """The second file write failing (a full disk), or any other: one line, the old folder as it was. Without the
    one-step exchange (another file system) the staged files still move in only once all are written."""
    folder, old, new = hub_clone
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    for failing in ("write_bytes", "write_text"):
        with monkeypatch.context() as m:
            def full(*a, **k):
                raise OSError(errno.ENOSPC, "No space left on device")
            m.setattr(pathlib.Path, failing, full)
            with pytest.raises(UserError, match="no space left on device") as e:
                ila.save_pretrained(new[0], folder, new[1])
        assert "\n" not in str(e.value) and which(folder, old, new) == "old" and user_files_kept(folder)
        assert leftovers(folder.parent) == [] and leftovers(folder) == []
    ila.save_pretrained(new[0], folder, new[1])
    assert which(folder, old, new) == "new" and user_files_kept(folder) and leftovers(folder) == []


def test_hub_exports_on_a_full_disk_are_one_line(tmp_path, capsys, monkeypatch):
    model, cfg = tiny_model(0)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, NAMES)
    single = tmp_path / "m.safetensors"
    single.write_bytes(b"old")
    assert main(["export", "--checkpoint", str(path), "--format", "hub", "--out", str(tmp_path / "f")]) == 0

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    before = (tmp_path / "f" / "model.safetensors").stat().st_mtime_ns
    for out in (tmp_path / "f", single):
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(path), "--format", "hub", "--out", str(out)]) == 2
        assert "no space left on device" in one_line(capsys.readouterr().err)
    assert single.read_bytes() == b"old" and (tmp_path / "f" / "model.safetensors").stat().st_mtime_ns == before
    assert leftovers(tmp_path) == []


WRITERS = """
import errno, sys, torch
from pathlib import Path
from ila.engine.onnx_export import _write_exported
from ila.hub import _write_weights

class M(torch.nn.Module):
    def forward(self, x):
        return x * 2
program = torch.export.export(M(), (torch.randn(2, 3),))
for write in (lambda p: _write_exported(program, p), lambda p: _write_weights(p, {"w": torch.ones(4)}, {}, False)):
    try:
        write(Path(sys.argv[1]))
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
        print("ENOSPC")
"""


def test_the_graph_and_weight_writers_meet_a_full_disk_with_an_oserror_not_an_abort(tmp_path):
    full = device_nodes(tmp_path)["full"]
    done = subprocess.run([sys.executable, "-c", WRITERS, str(full)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0 and done.stdout.split() == ["ENOSPC", "ENOSPC"], done.stderr[-2000:]
    assert is_char_device(full)


def test_an_exported_graph_on_a_full_disk_is_one_line_and_keeps_the_previous_files(tmp_path, capsys, monkeypatch):
    model, cfg = tiny_model(0)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, NAMES)
    out = tmp_path / "m.pt2"
    out.write_bytes(b"previous graph")
    (tmp_path / "m.pt2.json").write_text("previous metadata")

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    assert main(["export", "--checkpoint", str(path), "--format", "exported", "--out", str(out), "--no-check"]) == 2
    assert "no space left on device" in one_line(capsys.readouterr().err)
    assert out.read_bytes() == b"previous graph" and (tmp_path / "m.pt2.json").read_text() == "previous metadata"
    assert leftovers(tmp_path) == []


# ----------------------------------------------------------------------------------------- 3. evaluations

def eval_checkpoint(motion, tmp_path, name="model.pt", seed=None):
    model = ila_model()
    if seed is not None:
        with torch.no_grad():
            next(model.parameters()).add_(0.01 * seed)
    return save_checkpoint(tmp_path / name, model, tiny(motion, tmp_path), (motion / "classes.txt").read_text().splitlines())


def test_an_evaluation_is_never_silently_replaced(motion, tmp_path, capsys):
    a = eval_checkpoint(motion, tmp_path, "a.pt")
    b = eval_checkpoint(motion, tmp_path, "b.pt", seed=1)
    out = tmp_path / "results"
    run_eval(a, ["data.workers=0"], output=out)
    first = (out / "metrics.json").read_text()
    code = main(["eval", "--checkpoint", str(b), "--output", str(out), "--set", "data.workers=0"])
    err = one_line(capsys.readouterr().err)
    assert code == 2 and f"--output {out} already holds the evaluation of other weights" in err and "--overwrite" in err
    fewer = tmp_path / "fewer.txt"
    fewer.write_text("".join((motion / "val.txt").read_text().splitlines(keepends=True)[:4]))
    with pytest.raises(UserError, match="these weights on other data"):
        run_eval(a, ["data.workers=0", f"data.val_list={fewer}"], output=out)
    assert (out / "metrics.json").read_text() == first
    run_eval(a, ["data.workers=0", "eval.clips=2"], output=out)          # the same weights and data: replaced
    assert json.loads((out / "metrics.json").read_text())["clips"] == 2
    assert main(["eval", "--checkpoint", str(b), "--output", str(out), "--overwrite", "--set", "data.workers=0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["weights"]["file"] == str(b)
    assert (out / LOCK_NAME).read_text() == ""


def test_lock_files_hold_no_personal_data_and_a_failed_eval_leaves_no_lock(motion, tmp_path, capsys):
    with RunLock(tmp_path / "run") as lock:
        note = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert sorted(note) == ["pid", "since"] and note["pid"] == os.getpid()
        with pytest.raises(UserError, match=rf"in use by process {os.getpid()} on this machine"):
            RunLock(tmp_path / "run").acquire()
    assert lock._file is None and not (tmp_path / "run").exists()      # made by the lock, nothing else in it
    model = ila_model()
    with torch.no_grad():
        model.head.classifier[-1].weight.fill_(float("nan"))
    bad = save_checkpoint(tmp_path / "nan.pt", model, tiny(motion, tmp_path), (motion / "classes.txt").read_text().splitlines())
    assert main(["eval", "--checkpoint", str(bad), "--set", "data.workers=0"]) == 2
    assert "not finite" in one_line(capsys.readouterr().err) and not (tmp_path / "eval").exists()
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "notes.txt").write_text("mine")
    assert main(["eval", "--checkpoint", str(bad), "--output", str(tmp_path / "kept"), "--set", "data.workers=0"]) == 2
    capsys.readouterr()
    assert (tmp_path / "kept" / LOCK_NAME).read_text() == "" and (tmp_path / "kept" / "notes.txt").is_file()


def test_nothing_is_written_inside_an_evaluated_shareable_folder(motion, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "share"
    ila.save_pretrained(ila_model(), folder, (motion / "classes.txt").read_text().splitlines(), config=tiny(motion, tmp_path))
    sets = ["--set", f"data.val_list={motion}/val.txt", f"data.root={motion}", "data.workers=0"]
    monkeypatch.chdir(folder)
    assert main(["eval", "--checkpoint", "../share", *sets]) == 2     # the default eval/share would be in it
    assert "the default output eval/share lies inside the evaluated folder" in one_line(capsys.readouterr().err)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--checkpoint", "share", "--output", "share/eval", *sets]) == 2
    assert "--output share/eval lies inside the evaluated folder" in one_line(capsys.readouterr().err)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]


# ----------------------------------------------------------------------------------------- 4. resume states

def train_state() -> dict:
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1e-3, "name": "all"}])
    p.grad = torch.ones(3)
    opt.step()
    return {"epoch": 1, "batch_in_epoch": 0, "step": 4, "steps_per_epoch": 4, "total_steps": 8, "align_delta": 0.2,
            "best_top1": None, "best_epoch": None, "validation_pending": False, "optimizer": opt.state_dict(),
            "scaler": {}, "rng": [ckpt.rng_state()], "world": 1}


def with_attributes(d: dict):
    """A mapping as a pickle can make it: an OrderedDict with attributes set on it."""
    out = collections.OrderedDict(d)
    out.injected = "value"
    return out


def rng(ts):
    return ts["rng"][0]


DAMAGE = {
    "torch missing": lambda ts: rng(ts).pop("torch"),
    "torch short": lambda ts: rng(ts).update(torch=rng(ts)["torch"][:100]),
    "torch dtype": lambda ts: rng(ts).update(torch=rng(ts)["torch"].long()),
    "numpy short": lambda ts: rng(ts).update(numpy=rng(ts)["numpy"][:600]),
    "numpy values": lambda ts: rng(ts).update(numpy=rng(ts)["numpy"] - (1 << 33)),
    "numpy_pos": lambda ts: rng(ts).update(numpy_pos=10_000),
    "numpy_gauss": lambda ts: rng(ts).update(numpy_gauss=(1,)),
    "numpy_gauss type": lambda ts: rng(ts).update(numpy_gauss=("1", 0.0)),
    "python short": lambda ts: rng(ts).update(python=rng(ts)["python"][:624]),
    "python negative": lambda ts: rng(ts).update(python=-rng(ts)["python"] - 1),
    "python dtype": lambda ts: rng(ts).update(python=rng(ts)["python"].float()),
    "python_version": lambda ts: rng(ts).update(python_version=2),
    "python_gauss": lambda ts: rng(ts).update(python_gauss="0.5"),
    "python_gauss missing": lambda ts: rng(ts).pop("python_gauss"),
    "cuda": lambda ts: rng(ts).update(cuda=torch.zeros(16, dtype=torch.int64)),
    "rng with attributes": lambda ts: ts.update(rng=[with_attributes(rng(ts))]),
    "rng tuple": lambda ts: ts.update(rng=tuple(ts["rng"])),
    "state with attributes": lambda ts: ts["optimizer"].update(state=with_attributes(ts["optimizer"]["state"])),
    "best_epoch": lambda ts: ts.update(best_epoch="3"),
    "best_top1": lambda ts: ts.update(best_top1="nan"),
    "validation_pending": lambda ts: ts.update(validation_pending=1),
    "world": lambda ts: ts.update(world=2),
    "world type": lambda ts: ts.update(world=1.0),
    "epoch bool": lambda ts: ts.update(epoch=True),
    "steps_per_epoch": lambda ts: ts.update(steps_per_epoch=0),
    "align_delta": lambda ts: ts.update(align_delta=float("nan")),
    "lr": lambda ts: ts["optimizer"]["param_groups"][0].update(lr="fast"),
    "params": lambda ts: ts["optimizer"]["param_groups"][0].update(params=["0"]),
    "optimizer state": lambda ts: ts["optimizer"]["state"].update({0: "moments"}),
    "scaler": lambda ts: ts.update(scaler={"scale": "big"}),
}


def test_a_sound_training_state_passes_and_restores():
    ts = train_state()
    stored._check_train_state(ts, "x.pt")
    ts["rng"][0]["cuda"] = torch.zeros(16, dtype=torch.uint8)
    stored._check_train_state(ts, "x.pt")
    ts["best_top1"] = float("nan")                  # a NaN best figure is read (and reported as no valid result)
    stored._check_train_state(ts, "x.pt")


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_field_of_a_training_state_is_checked(damage):
    ts = train_state()
    DAMAGE[damage](ts)
    with pytest.raises(UserError, match="x.pt: damaged ila checkpoint") as e:
        stored._check_train_state(ts, "x.pt")
    assert "\n" not in str(e.value)


def test_a_damaged_rng_through_the_file_is_one_line_at_resume(tmp_path, capsys):
    model, cfg = tiny_model(0)
    ts = train_state()
    ts["rng"] = [with_attributes(ts["rng"][0])]
    path = save_checkpoint(tmp_path / "checkpoint-00000004.pt", model, cfg, NAMES, train_state=ts)
    assert main(["train", "--resume", str(path)]) == 2
    assert "train_state.rng[0]` is a OrderedDict, not a plain mapping" in one_line(capsys.readouterr().err)


def test_set_rng_state_refuses_in_one_line_and_restores_nothing():
    state = ckpt.rng_state()
    torch.rand(3)                                    # the generator moves on from the saved state
    before = torch.get_rng_state()
    state["python"] = -state["python"] - 1
    with pytest.raises(UserError, match="python random generator state cannot be restored"):
        ckpt.set_rng_state(state)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_nan_best_figure_is_reported_as_no_valid_result(motion, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = ["train.save_every_steps=1", "train.eval_every_epochs=1"]
    train(tiny(motion, run, *cfg, "train.stop_at_step=1"))
    path = stored.latest_checkpoint(run)
    state = torch.load(path, weights_only=True)
    state["train_state"].update(best_top1=float("nan"), best_epoch=None)
    torch.save(state, path)
    capsys.readouterr()
    train(tiny(motion, run, *cfg, "train.stop_at_step=2"), resume=str(run))
    best = [line for line in capsys.readouterr().out.splitlines() if line.startswith("best:")]
    assert len(best) == 1 and best[0].startswith("best: no valid validation result yet")
    assert "nan" not in best[0].replace(str(tmp_path), "").lower() and "best.pt" not in best[0]
    assert not (run / "best.pt").exists()
    train(tiny(motion, run, *cfg, "train.stop_at_step=4"), resume=str(run))      # the epoch ends: validated
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("best: top-1 ") and "at epoch 1" in last and (run / "best.pt").is_file()
    assert math.isfinite(stored.best_metrics(run)["top1"])
