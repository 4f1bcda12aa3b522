"""Trust at the edges of the engine: bad videos are never replaced by others, nothing written is lost, one
writer per run directory, and every failure a user can cause is one line (issue 12)."""
import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ila.cli import main
from ila.weights import checkpoint as stored
from ila.engine.checkpoint import save_checkpoint
from ila.engine.evaluate import run_eval
from ila.engine.runlock import RunLock
from ila.engine.train import train
from ila.errors import UserError, one_line, printable
from test_engine_evaluate import ila_model
from test_engine_train import assert_same_weights, tiny


@pytest.fixture
def bad_val(motion, tmp_path):
    """A validation list of the 5 good videos with 2 unreadable ones in between (absolute paths)."""
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    good = [line.split() for line in (motion / "val.txt").read_text().splitlines()]
    lines = [f"{motion / p} {y}" for p, y in good[:2]] + [f"{tmp_path / 'text.mp4'} 3"] + \
            [f"{motion / p} {y}" for p, y in good[2:4]] + [f"{tmp_path / 'empty.mp4'} 0"] + \
            [f"{motion / p} {y}" for p, y in good[4:]]
    (tmp_path / "bad_val.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "bad_val.txt"


def checkpoint_file(motion, tmp_path, model=None):
    cfg = tiny(motion, tmp_path)
    names = (motion / "classes.txt").read_text().splitlines()
    return save_checkpoint(tmp_path / "model.pt", model or ila_model(), cfg, names)


def error_line(err: str) -> str:
    """The one error line of a command's stderr (progress bars aside), which must be there exactly once."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("ila ")]
    assert len(lines) == 1 and "Traceback" not in err and "\x1b" not in lines[0], err
    return lines[0]


def rows(path):
    return list(csv.DictReader(open(path)))


def test_eval_under_skip_scores_only_readable_videos_and_lists_the_others(motion, tmp_path, bad_val):
    path = checkpoint_file(motion, tmp_path)
    clean = run_eval(path, ["data.workers=0"], output=tmp_path / "clean")
    metrics = run_eval(path, [f"data.val_list={bad_val}", "data.root=", "data.bad_files=skip", "data.workers=2",
                              "eval.batch_size=3"], output=tmp_path / "skip")
    assert metrics["videos"] == 5 and metrics["skipped"] == 2 and metrics["top1"] == clean["top1"]
    skipped = rows(tmp_path / "skip" / "skipped.csv")
    assert [Path(r["path"]).name for r in skipped] == ["text.mp4", "empty.mp4"] and all(r["reason"] for r in skipped)
    # every row is its own video's result: the same label, prediction and score as on the clean list
    same = {Path(r["path"]).name: r for r in rows(tmp_path / "clean" / "predictions.csv")}
    got = rows(tmp_path / "skip" / "predictions.csv")
    assert len(got) == 5 and all(same[Path(r["path"]).name] == {**r, "path": same[Path(r["path"]).name]["path"]}
                                 for r in got)
    saved = json.loads((tmp_path / "skip" / "metrics.json").read_text())
    assert saved["videos"] == 5 and saved["skipped"] == 2 and "2 unreadable skipped" in saved["covers"]


def test_eval_names_every_unreadable_video_in_one_pass(motion, tmp_path, bad_val, capsys):
    path = checkpoint_file(motion, tmp_path)
    code = main(["eval", "--checkpoint", str(path), "--output", str(tmp_path / "out"),
                 "--set", f"data.val_list={bad_val}", "data.root=", "data.workers=0"])
    err = error_line(capsys.readouterr().err)
    assert code == 2 and "2 of 7 videos cannot be read" in err
    assert "text.mp4" in err and "empty.mp4" in err and "data.bad_files=skip" in err
    listed = rows(tmp_path / "out" / "unreadable.csv")
    assert [Path(r["path"]).name for r in listed] == ["text.mp4", "empty.mp4"]
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_non_finite_outputs_stop_evaluation_and_prediction(motion, tmp_path, capsys):
    model = ila_model()
    with torch.no_grad():
        model.head.classifier[-1].weight.fill_(float("nan"))
    path = checkpoint_file(motion, tmp_path, model)
    code = main(["eval", "--checkpoint", str(path), "--set", "data.workers=0"])
    assert code == 2 and "not finite" in capsys.readouterr().err
    code = main(["predict", "--checkpoint", str(path), str(motion / "val" / "000000.mp4")])
    captured = capsys.readouterr()
    assert code != 0 and "nan" not in captured.out.lower() and "not finite" in captured.err


def test_classes_on_a_classifier_must_name_exactly_its_classes(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    video = str(motion / "val" / "000000.mp4")
    code = main(["predict", "--checkpoint", str(path), video, "--classes", "a,b,c"])
    err = capsys.readouterr().err
    assert code == 2 and "classifier has 8 outputs but the --classes names 3" in err and "--trim-classifier" in err
    names = [f"c{i}" for i in range(8)]
    code = main(["predict", "--checkpoint", str(path), video, "--classes", ",".join(names), "--topk", "8"])
    captured = capsys.readouterr()
    assert code == 0 and "renaming the classifier's 8 classes" in captured.err
    assert sorted(line.split()[-1] for line in captured.out.splitlines()[1:]) == names


def test_train_checks_every_file_before_the_first_step(motion, tmp_path):
    lines = (motion / "train.txt").read_text().splitlines()
    (tmp_path / "train.txt").write_text("\n".join(lines + ["train/missing1.mp4 0", "train/missing2.mp4 1"]) + "\n")
    cfg = tiny(motion, tmp_path / "run", f"data.train_list={tmp_path}/train.txt")
    with pytest.raises(UserError, match=r"2 of 10 videos of data.train_list .* do not exist .*missing1.mp4"):
        train(cfg)
    assert stored.step_checkpoints(tmp_path / "run") == []


def test_a_failed_validation_keeps_the_epoch_and_resume_validates_it_first(motion, tmp_path):
    sets = ["train.eval_every_epochs=1", "train.epochs=2"]
    reference = train(tiny(motion, tmp_path / "ref", *sets))
    val = tmp_path / "val"
    shutil.copytree(motion / "val", val)
    (val / "000003.mp4").write_bytes(b"broken")                      # exists, so the pre-flight check passes
    cfg = tiny(motion, tmp_path / "run", *sets, f"data.val_list={motion}/val.txt", f"data.root={tmp_path}")
    shutil.copytree(motion / "train", tmp_path / "train")
    with pytest.raises(UserError, match=r"validation after epoch 1: .*000003.mp4.*checkpoint-00000004.pt.*--resume"):
        train(cfg)
    state = stored.read_checkpoint(tmp_path / "run", resume=True)
    assert state["train_state"]["step"] == 4 and state["train_state"]["validation_pending"] is True
    shutil.copy(motion / "val" / "000003.mp4", val / "000003.mp4")     # the user fixes the file
    train(cfg, resume=str(tmp_path / "run"))
    assert_same_weights(stored.read_checkpoint(reference, resume=True)["model"], stored.read_checkpoint(tmp_path / "run", resume=True)["model"])
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in metrics if "val_top1" in r] == [1, 2]            # epoch 1 validated once
    assert stored.best_metrics(tmp_path / "run")["top1"] == stored.best_metrics(reference)["top1"]


def test_one_writer_per_run_directory_and_stale_temporaries_go(motion, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".checkpoint-00000002.pt.ab12cd34.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    keep = run / ".notes.txt"
    keep.write_text("mine")
    with RunLock(run):
        assert not stale.exists() and keep.exists()
        with pytest.raises(UserError, match=rf"in use by process {os.getpid()} on .*choose another --output"):
            train(tiny(motion, run, "train.stop_at_step=1"))
    train(tiny(motion, run, "train.stop_at_step=1"))                 # the lock went with its holder
    assert stored.latest_checkpoint(run).name == "checkpoint-00000001.pt"


def test_a_killed_holder_leaves_no_lock(tmp_path):
    code = f"from ila.engine.runlock import RunLock; lock = RunLock({str(tmp_path)!r}).acquire(); import time; time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    try:
        deadline = time.time() + 30
        while not (tmp_path / ".lock").exists() or not (tmp_path / ".lock").read_text():
            assert time.time() < deadline
            time.sleep(0.1)
        with pytest.raises(UserError, match=f"in use by process {holder.pid}"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    RunLock(tmp_path).acquire().release()


def test_resume_falls_back_to_the_newest_checkpoint_that_loads(motion, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny(motion, run, "train.save_every_steps=1", "train.stop_at_step=3"))
    newest = stored.latest_checkpoint(run)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])     # cut short, as by a dying disk
    capsys.readouterr()
    train(tiny(motion, run, "train.save_every_steps=1", "train.stop_at_step=4"))
    captured = capsys.readouterr()
    assert f"skipping unreadable checkpoint {newest}" in captured.err and "resuming at step 2" in captured.out
    assert stored.read_checkpoint(run, resume=True)["train_state"]["step"] == 4


@pytest.fixture
def tiny_disk(tmp_path):
    """A 32 MB tmpfs, where this machine lets the tests mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or done.returncode}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk, leave=64 << 10):
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def test_a_full_disk_is_one_line_and_keeps_the_last_good_checkpoint(motion, tiny_disk, capsys):
    run = tiny_disk / "run"
    sets = ["--set", f"data.root={motion}", f"data.train_list={motion}/train.txt", f"data.val_list={motion}/val.txt",
            f"data.class_names={motion}/classes.txt", "data.workers=0", "device=cpu", "train.init=none",
            "train.epochs=2", "train.warmup_epochs=1", "train.batch_size=2", "train.eval_every_epochs=0",
            "train.save_every_steps=1"]
    assert main(["train", "--config", "tiny", "--output", str(run), *sets, "train.stop_at_step=2"]) == 0
    last = stored.latest_checkpoint(run)
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    fill(tiny_disk)
    capsys.readouterr()
    code = main(["train", "--config", "tiny", "--output", str(run), *sets, "train.stop_at_step=3"])
    err = error_line(capsys.readouterr().err)
    assert code == 2 and "no space left on device" in err and str(run) in err
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest and stored.latest_checkpoint(run) == last
    assert not [p for p in run.iterdir() if ".tmp" in p.name]
    code = main(["eval", "--checkpoint", str(run), "--output", str(tiny_disk / "eval"), "--set", "data.workers=0"])
    assert code == 2 and "no space left on device" in error_line(capsys.readouterr().err)


def test_output_paths_that_cannot_be_folders_are_one_line(motion, tmp_path, capsys):
    path = checkpoint_file(motion, tmp_path)
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile", tmp_path / "afile" / "below"):
        code = main(["eval", "--checkpoint", str(path), "--output", str(output), "--set", "data.workers=0"])
        assert code == 2 and "afile" in error_line(capsys.readouterr().err)
    code = main(["train", "--config", "tiny", "--output", str(tmp_path / "afile"), "--set", f"data.root={motion}",
                 f"data.train_list={motion}/train.txt", "train.init=none", "data.workers=0"])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a folder" in err


def test_error_lines_carry_no_escape_codes():
    assert printable("bad \x1b[31mred\x1b[0m\nnext\tline\x07") == "bad ?[31mred?[0m?next line?"   # inert
    assert one_line("first \x1b[1mline\x1b[0m\nsecond line") == "first line" and len(one_line("x" * 5000)) == 200


def test_messages_of_the_command_line_are_one_clean_line(tmp_path, capsys):
    code = main(["eval", "--checkpoint", str(tmp_path / "a\x1b[31mred\nfile.pt")])
    assert code == 2 and "file.pt" in error_line(capsys.readouterr().err)


def test_torchrun_workers_stop_when_the_launcher_dies(motion, tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ila",
           "train", "--config", "tiny", "--output", str(run), "--set", f"data.root={motion}",
           f"data.train_list={motion}/train.txt", "data.workers=0", "device=cpu", "train.init=none",
           "train.epochs=1000", "train.batch_size=1", "train.eval_every_epochs=0"]
    launcher = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (run / "metrics.jsonl").exists():                     # workers are training
            assert time.time() < deadline and launcher.poll() is None
            time.sleep(0.5)
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.time() + 20
        while any(_alive(pid) for pid in workers):
            assert time.time() < deadline, "workers still running 20 s after the launcher died"
            time.sleep(0.2)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        subprocess.run(["pkill", "-9", "-f", str(run)], check=False)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
