"""Shareable models (ila.hub): config.json + model.safetensors + README.md folders, .safetensors files, the Hugging
Face Hub cache in offline mode, shipped class lists, and one-line errors for malformed folders."""
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import ila
from ila.weights import weights_sha256
from ila.cli import main
from ila.config import load_config
from ila import load_checkpoint
from ila.engine.checkpoint import save_checkpoint
from ila.engine.classes import class_names_from
from ila.errors import UserError
from ila import from_pretrained, save_pretrained

NAMES = [f"class {i}" for i in range(8)]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    cfg = load_config("tiny", ["eval.clips=2", "data.sampling=segment"])
    return ila.build_model(cfg.model).eval(), cfg


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """A tiny classifier saved as a shareable folder."""
    model, cfg = tiny_model()
    folder = tmp_path_factory.mktemp("shared") / "tiny-ila"
    ila.save_pretrained(model, folder, NAMES, config=cfg)
    return folder, model, cfg


def hub_cache(home: Path, repo_id: str, folders: dict[str, Path], refs: dict[str, str]) -> Path:
    """Lay `folders` ({commit: folder}) out the way huggingface_hub caches a model repo: content-addressed blobs,
    one snapshot folder per commit whose files link to the blobs, refs naming commits."""
    repo = home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for commit, folder in folders.items():
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        for f in sorted(folder.iterdir()):
            data = f.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)
    return home / "hub"


def test_folder_round_trip_gives_same_logits_names_and_config(shared):
    folder, model, cfg = shared
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    meta = json.loads((folder / "config.json").read_text())
    assert meta["preprocessing"] == {"num_frames": 4, "input_size": 32, "mean": [123.675, 116.28, 103.53],
                                     "std": [58.395, 57.12, 57.375], "pixel_range": 255, "channels": "RGB",
                                     "sampling": "segment", "frame_interval": 4, "test_clips": 2, "test_crops": 1}
    loaded = from_pretrained(folder)
    video = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(video).logits, model(video).logits)
    assert loaded.class_names == NAMES and loaded.cfg == model.cfg
    assert loaded.config.data.num_frames == 4 and loaded.config.eval.clips == 2 and loaded.config.preset == "tiny"
    # the engine's loader reads the folder too, and a second save writes the same files
    m2, cfg2, names2 = ila.load_checkpoint(folder)
    assert names2 == NAMES and cfg2.model == cfg.model
    again = folder.parent / "again"
    ila.save_pretrained(loaded, again)
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    assert "library_name: ila" in card and "| preset | tiny |" in card and "4 frames x 32 x 32 px" in card
    assert 'ila.from_pretrained("tiny-ila")' in card and "8 (class 0, class 1, class 2, ...)" in card


def test_hub_repo_id_loads_from_the_cache_offline_with_revisions(shared, tmp_path):
    folder, model, _ = shared
    other, _ = tiny_model(seed=1)
    old = tmp_path / "old"
    save_pretrained(other, old, [f"old {i}" for i in range(8)])
    c_new, c_old = "1" * 40, "2" * 40
    cache = hub_cache(tmp_path / "hf", "someone/tiny-ila", {c_new: folder, c_old: old}, {"main": c_new, "v0": c_old})
    video = torch.randn(1, 4, 3, 32, 32)
    main_model = from_pretrained("someone/tiny-ila", cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(main_model(video).logits, model(video).logits)
        for rev in ("v0", c_old):
            old_model = from_pretrained("someone/tiny-ila", revision=rev, cache_dir=cache)
            assert old_model.class_names[0] == "old 0" and torch.equal(old_model(video).logits, other(video).logits)
    with pytest.raises(UserError, match="someone/missing: not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        from_pretrained("someone/missing", cache_dir=cache)
    with pytest.raises(UserError, match="tiny-ila@v9: not in the local Hugging Face cache"):
        from_pretrained("someone/tiny-ila", revision="v9", cache_dir=cache)


def test_cli_predicts_from_a_hub_id_in_an_offline_cache_like_from_the_folder(shared, motion, tmp_path, capsys):
    folder, _, _ = shared
    hub_cache(tmp_path / "hf", "someone/tiny-ila", {"3" * 40: folder}, {"main": "3" * 40})
    video = motion / "val" / sorted(os.listdir(motion / "val"))[0]
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(sys.path))
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "ila", "predict", "--checkpoint", "someone/tiny-ila", str(video),
                           "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert main(["predict", "--checkpoint", str(folder), str(video), "--json"]) == 0
    assert json.loads(done.stdout) == json.loads(capsys.readouterr().out)
    done = subprocess.run([sys.executable, "-m", "ila", "eval", "--checkpoint", "someone/tiny-ila", "--set",
                           f"data.root={motion}", f"data.val_list={motion}/val.txt", "data.workers=0"],
                          env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "eval" / "someone--tiny-ila" / "metrics.json").read_text())["videos"] == 5
    done = subprocess.run([sys.executable, "-m", "ila", "predict", "--checkpoint", "someone/other", str(video)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "ila predict: error: Hub model someone/other: not in the local Hugging Face cache and HF_HUB_OFFLINE=1 "
        "forbids downloading"]


def test_export_hub_from_a_run_carries_its_evaluation(tmp_path, capsys):
    model, cfg = tiny_model()
    run = tmp_path / "run"
    save_checkpoint(run / "best.pt", model, cfg, NAMES, {"epoch": 3, "step": 12, "best_top1": 62.5})
    (run / "eval").mkdir()
    results = {"videos": 5, "top1": 80.0, "top5": 100.0, "mean_class_acc": 75.0, "clips": 2, "crops": 3,
               "data": {"list": "/data/val.txt", "list_sha256": "0123456789abcdef" * 4}}
    # results of other weights (another checkpoint of the run, evaluated last) never reach the card
    other = {"sha256": weights_sha256(tiny_model(seed=1)[0].state_dict())}
    (run / "eval" / "metrics.json").write_text(json.dumps({**results, "top1": 25.0, "weights": other}))
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    meta = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert meta["evaluation"] == {"best validation top1 during training (1 view)": 62.5}
    # results of these very weights (the same sha256 whatever the file format) do, with their data named
    (run / "eval" / "metrics.json").write_text(json.dumps({**results, "weights": {"sha256": weights_sha256(
        {k: v.clone() for k, v in model.state_dict().items()})}}))
    assert main(["export", "--checkpoint", str(run / "best.pt"), "--format", "hub", "--out", str(tmp_path / "hub")]) == 0
    meta = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert meta["evaluation"] == {"videos": 5, "top1": 80.0, "top5": 100.0, "mean_class_acc": 75.0, "clips": 2,
                                  "crops": 3, "data": "val.txt (sha256 0123456789ab)"}
    assert meta["source"] == "trained with ila (run tiny, epoch 3, step 12)"
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "| top1 | 80.00 |" in card and "| crops | 3 |" in card and "| data | val.txt (sha256 0123456789ab) |" in card
    (run / "eval" / "metrics.json").unlink()
    assert main(["export", "--checkpoint", str(run), "--format", "hub", "--out", str(tmp_path / "hub2"),
                 "--classes", ",".join(f"n{i}" for i in range(8))]) == 0
    meta = json.loads((tmp_path / "hub2" / "config.json").read_text())
    assert meta["evaluation"] == {"best validation top1 during training (1 view)": 62.5} and meta["class_names"][0] == "n0"
    best = tmp_path / "best.pt"                  # what training's best.pt carries: the validation that made it
    save_checkpoint(best, model, cfg, NAMES, metrics={"top1": 40.0, "top5": 90.0, "videos": 5, "epoch": 2, "step": 8})
    assert main(["export", "--checkpoint", str(best), "--format", "hub", "--out", str(tmp_path / "hub3")]) == 0
    meta = json.loads((tmp_path / "hub3" / "config.json").read_text())
    assert meta["evaluation"] == {"validation top1 during training (1 view)": 40.0, "validation top5 during "
                                  "training (1 view)": 90.0, "videos": 5, "epoch": 2, "step": 8}
    assert meta["source"] == "trained with ila (run tiny, epoch 2, step 8)"
    # into a folder that holds other files (a clone of a Hub repo): they are kept
    (tmp_path / "hub2" / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    assert main(["export", "--checkpoint", str(run), "--format", "hub", "--out", str(tmp_path / "hub2")]) == 0
    assert (tmp_path / "hub2" / ".gitattributes").is_file()


def test_convert_writes_folder_and_safetensors_forms_of_a_release(fixtures_dir, tmp_path, capsys):
    release = os.path.join(fixtures_dir, "k400_tiny_release.pth")
    reference = ila.load_release(release).eval()
    video = torch.randn(1, reference.cfg.num_frames, 3, reference.cfg.image_resolution, reference.cfg.image_resolution)
    tokens = ila.tokenize(["archery", "bowling", "juggling"])
    with torch.no_grad():
        expected = reference(video, tokens).logits
    for out in (tmp_path / "k400", tmp_path / "k400.safetensors"):
        assert main(["convert", release, str(out), "--classes", "archery,bowling,juggling"]) == 0
        model = from_pretrained(out)
        with torch.no_grad():
            assert torch.equal(model(video, ila.tokenize(model.class_names)).logits, expected)
        assert model.source.startswith("the authors' release checkpoint k400_tiny_release.pth")
    assert "weights from | the authors' release checkpoint" in (tmp_path / "k400" / "README.md").read_text()
    code = main(["convert", release, str(tmp_path / "k400.bin")])
    assert code == 2 and "end it with .pt (ila checkpoint) or .safetensors, or give a folder" in capsys.readouterr().err


def test_shipped_class_lists_work_where_classes_are_accepted(fixtures_dir, motion, tmp_path, capsys):
    k400, ssv2 = class_names_from("kinetics400"), class_names_from("ssv2")
    assert len(k400) == 400 and k400[:2] == ["abseiling", "air drumming"] and k400[-1] == "zumba"
    assert len(ssv2) == 174 and ssv2[0] == "Approaching something with your camera"
    assert ssv2[-1] == "Wiping something off of something" and class_names_from("K400") == k400
    assert load_config("tiny", ["data.class_names=ssv2"]).data.class_names == "ssv2"
    out = tmp_path / "k400"
    assert main(["convert", os.path.join(fixtures_dir, "k400_tiny_release.pth"), str(out), "--classes", "kinetics400"]) == 0
    assert json.loads((out / "config.json").read_text())["class_names"] == k400
    video = motion / "val" / sorted(os.listdir(motion / "val"))[0]
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(out), str(video), "--json", "--topk", "3"]) == 0
    assert all(p["class"] in k400 for p in json.loads(capsys.readouterr().out)[0]["predictions"])
    with pytest.raises(UserError, match="or a shipped list: kinetics400, k400, ssv2"):
        class_names_from("kinetics600")


def _broken(folder: Path, tmp: Path, change) -> Path:
    target = tmp / "broken"
    shutil.copytree(folder, target)
    change(target)
    return target


def _edit_config(edit):
    def change(target):
        meta = json.loads((target / "config.json").read_text())
        edit(meta)
        (target / "config.json").write_text(json.dumps(meta))
    return change


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("change, message", [
    (lambda t: (t / "config.json").unlink(), "is not a shared ila model folder: it has no config.json"),
    (lambda t: (t / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda t: (t / "config.json").write_text("{\"model\": {"), "config.json is not valid JSON (Expecting property name"),
    (lambda t: (t / "config.json").write_bytes(b"\xff\xfe\x00binary"), "config.json is not a text file"),
    (lambda t: (t / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object, got list"),
    (lambda t: (t / "config.json").write_text('{"model_type": "xclip"}'),
     "is not an ila model config: no \"ila_format\": \"ila-pretrained/1\" (it looks like a 'xclip' model of another library)"),
    (_edit_config(lambda m: m["model"].update(num_frames="4")), "config.json: model.num_frames must be an integer, got \"4\""),
    (_edit_config(lambda m: m["model"].update(freeze_clip=1)), "model.freeze_clip must be true/false, got 1"),
    (_edit_config(lambda m: m["model"].update(temporal="lstm")), "model.temporal must be one of ila, mean, attention, joint"),
    (_edit_config(lambda m: m["model"].update(depth=3)), "unknown model key 'depth'"),
    (_edit_config(lambda m: m["model"].pop("temporal")), "the saved config lacks 1 model key(s) (temporal)"),
    (_edit_config(lambda m: m.update(class_names="a,b")), "\"class_names\" must be a JSON array"),
    (_edit_config(lambda m: m.update(class_names=[1, 2])), "class_names must be a list, got [1, 2]"),
    (_edit_config(lambda m: m.update(preset=3)), "preset must be a string or none, got 3"),
    (_edit_config(lambda m: m["preprocessing"].pop("sampling")), "preprocessing.sampling is missing"),
    (_edit_config(lambda m: m["preprocessing"].update(num_frames=8)),
     "data.num_frames=8 disagrees with model.num_frames=4"),
    (_edit_config(lambda m: m["preprocessing"].update(mean=[0.485, 0.456, 0.406])),
     "preprocessing.mean=[0.485, 0.456, 0.406] differs from ila's"),
    (_edit_config(lambda m: m["model"].update(vision_width=128)), "weights do not fit the config (shape of"),
    (_edit_config(lambda m: m["model"].update(vision_layers=10**9)), "model.vision_layers=1000000000 is not allowed"),
    (_edit_config(lambda m: m["model"].update(vision_width=2**40)), "model.vision_width=1099511627776 is not allowed"),
    # a valid config far larger than the weights beside it (64 layers x 4096 wide: ~61 GiB): counted, never built
    (_edit_config(lambda m: m["model"].update(vision_layers=64, vision_width=4096)),
     "its weights describe a model of"),
    (_edit_config(lambda m: m["model"].update(vision_patch_size=0)), "model.vision_patch_size=0 is not allowed"),
    (_edit_config(lambda m: m["model"].update(drop_path=float("nan"))), "model.drop_path must be a finite number, got NaN"),
    (lambda t: (t / "model.safetensors").write_bytes(b"\x00" * 3), "model.safetensors is not a readable safetensors file"),
    (lambda t: (t / "model.safetensors").write_bytes(pickle.dumps(_Payload(str(t / "pwned")))),
     "model.safetensors is not a readable safetensors file"),
])
def test_malformed_folders_give_one_line_errors(shared, tmp_path, change, message, capsys):
    target = _broken(shared[0], tmp_path, change)
    with pytest.raises(UserError) as err:
        load_checkpoint(target)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (target / "pwned").exists()          # nothing in a shared folder is ever executed
    code = main(["eval", "--checkpoint", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err


def test_bare_and_foreign_safetensors_files_are_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(UserError, match="has no ila config in its metadata"):
        from_pretrained(tmp_path / "bare.safetensors")
    (tmp_path / "junk.safetensors").write_text("junk")
    with pytest.raises(UserError, match="junk.safetensors is not a readable safetensors file"):
        from_pretrained(tmp_path / "junk.safetensors")
    with pytest.raises(UserError, match="no such file or folder"):
        from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty holds no weights ila can read"):
        from_pretrained(tmp_path / "empty")
