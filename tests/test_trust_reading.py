"""Reading what others wrote, bounded: JSON through `ila.jsonsafe` (nesting, integer digits, float overflow) in every
reader of ila (pretrained folders and `.safetensors` metadata, SSv2 annotation lists, eval metrics beside a
checkpoint, feature files), and CLIP weights that open_clip's names resolve to (a Hugging Face cache, OpenAI's
~/.cache/clip) read by ila's restricted reader, never by `torch.load`. No test downloads anything.
"""
from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import ila
from ila import jsonsafe
from ila.config import load_config
from ila.data.annotations import read_annotations
from ila.engine.features import read_features
from ila.errors import UserError
from ila.hub import evaluation_of
from ila.safe_load import FileRefused
from ila.weights.checkpoint import FORMAT as CHECKPOINT_FORMAT
from ila.weights.clip import read_clip_weights

PACKAGE = Path(__file__).resolve().parent.parent / "ila"

# ------------------------------------------------------------------ jsonsafe itself

BOMBS = {   # text: what the refusal says
    "[" * 65 + "]" * 65: "nested deeper than 64",
    '{"a": ' * 65 + "1" + "}" * 65: "nested deeper than 64",
    "[" * 200_000: "nested deeper than 64",
    "[" * 200_000 + "]" * 200_000: "nested deeper than 64",
    "9" * 5000: "integer of 5000 digits",
    '{"id": ' + "1" * 200_000 + "}": "integer of 200000 digits",
    "-" + "9" * 31: "integer of 31 digits",
    "[1e999]": "too large for a float (1e999)",
    '{"x": -1.5e400}': "too large for a float",
    "0." + "5" * 100: "written with 102 characters",
}


@pytest.mark.parametrize("text", list(BOMBS), ids=lambda t: f"{t[:12]}...{len(t)}")
def test_json_bombs_are_one_line_refusals_naming_the_file(text):
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        jsonsafe.loads(text, Path("some/dir/config.json"))
    assert time.perf_counter() - start < 1.0
    message = str(err.value)
    assert message.startswith("some/dir/config.json") and BOMBS[text] in message and "\n" not in message, message


def test_json_within_the_limits_reads_as_json_does():
    for text in ["[" * 64 + "]" * 64, "9" * 30, "-" + "9" * 30, "1.7976931348623157e308", "[1e-999, -0.0, 2.5]",
                 '{"a": [1, {"b": null}], "c": "\\u00e9"}', "NaN", "[Infinity]", '"' + "[" * 1000 + '"',
                 '{"nested text": "' + "{" * 500 + '"}']:
        value = jsonsafe.loads(text, "x.json")
        assert json.dumps(value) == json.dumps(json.loads(text)), text
    with pytest.raises(jsonsafe.InvalidJSON) as err:
        jsonsafe.loads('{"a": }', "x.json")
    assert (err.value.lineno, err.value.colno) == (1, 7) and str(err.value).startswith("x.json is not valid JSON")
    with pytest.raises(UserError, match="not UTF-8"):
        jsonsafe.loads(b'["\xff"]', "x.json")


# ------------------------------------------------------------------ every reader of ila goes through it

@pytest.fixture(scope="module")
def shared_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = load_config("tiny")
    model = ila.build_model(cfg.model)
    folder = tmp_path_factory.mktemp("trust") / "model"
    ila.save_pretrained(model, folder, [f"c{i}" for i in range(8)], config=cfg)
    return folder, model


def _with_bomb(text: str, bomb: str) -> str:
    meta = json.loads(text)
    return json.dumps(meta).replace('"source": ""', '"source": ' + bomb)


@pytest.mark.parametrize("bomb", ["[" * 100 + "]" * 100, "1" * 5000, "1e999"])
def test_pretrained_config_and_metadata_bombs(shared_model, tmp_path, bomb):
    folder, model = shared_model
    config = (folder / "config.json").read_text()
    assert '"source": ""' in config
    case = tmp_path / "case"
    case.mkdir()
    (case / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (case / "config.json").write_text(_with_bomb(config, bomb))
    single = tmp_path / "one.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(single),
              metadata={"format": "pt", "ila_config": _with_bomb(config, bomb)})
    for source, named in ((case, "config.json"), (single, "the ila config in its metadata")):
        start = time.perf_counter()
        with pytest.raises(UserError) as err:
            ila.from_pretrained(source)
        assert time.perf_counter() - start < 1.0
        assert named in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_annotation_json_bombs(tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"Holding something": "0"}))
    entries = tmp_path / "something-something-v2-train.json"
    for bomb, says in (('[{"id": ' + "7" * 5000 + ', "template": "Holding [something]"}]', "integer of 5000 digits"),
                       ("[" * 100 + "]" * 100, "nested deeper than 64"), ("[" * 100_000, "nested deeper than 64")):
        entries.write_text(bomb)
        with pytest.raises(UserError, match=says) as err:
            read_annotations(str(entries), root="20bn")
        assert str(entries) in str(err.value) and "\n" not in str(err.value)
    labels.write_text('{"Holding something": ' + "1" * 40 + "}")
    entries.write_text(json.dumps([{"id": "1", "template": "Holding [something]"}]))
    with pytest.raises(UserError, match=r"labels\.json: a JSON integer of 40 digits"):
        read_annotations(str(entries), root="20bn")
    labels.write_text(json.dumps({"Holding something": "0"}))
    entries.write_text("[{]")
    with pytest.raises(UserError, match=r"train\.json:1: invalid JSON"):
        read_annotations(str(entries), root="20bn")


def test_eval_metrics_bombs_just_show_no_evaluation(tmp_path):
    cfg = load_config("tiny")
    torch.manual_seed(0)
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "class_names": [f"c{i}" for i in range(8)],
                "model": ila.build_model(cfg.model).state_dict(), "train_state": None}, run / "last.pt")
    record = ila.read_weights(run / "last.pt")
    good = {"weights": {"sha256": record.sha256}, "top1": 51.5, "top5": 90.0, "videos": 10}
    (run / "eval" / "metrics.json").write_text(json.dumps(good))
    assert evaluation_of(record) == {"videos": 10, "top1": 51.5, "top5": 90.0}
    for bomb in ('{"top1": 1e999, "weights": {"sha256": "%s"}}' % record.sha256, "[" * 100_000,
                 '{"videos": ' + "9" * 5000 + "}", "\xff\xfe garbage"):
        (run / "eval" / "metrics.json").write_text(bomb, encoding="latin-1")
        assert evaluation_of(record) is None


def test_feature_file_json_bombs(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((2, 3), dtype=np.float32))
    (tmp_path / "f.json").write_text(json.dumps({"array": "video_features", "videos": ["a", "b"]}))
    tensors, info = read_features(tmp_path / "f.npy")
    assert tensors["video_features"].shape == (2, 3) and info["videos"] == ["a", "b"]
    (tmp_path / "f.json").write_text('{"array": "video_features", "videos": ' + "[" * 100_000 + "}")
    with pytest.raises(UserError, match=r"f\.json: JSON nested deeper than 64"):
        read_features(tmp_path / "f.npy")
    save_file({"video_features": torch.zeros(2, 3)}, str(tmp_path / "g.safetensors"),
              metadata={"videos": json.dumps(["a", "b"]), "clips": "9" * 5000})
    with pytest.raises(UserError, match=r"g\.safetensors: metadata 'clips': a JSON integer of 5000 digits"):
        read_features(tmp_path / "g.safetensors")


# files that read only JSON ila itself wrote in the user's output folders (a demo marker, the previous metrics.json
# an evaluation would overwrite, the training log, a lock file); every reader of files from elsewhere uses jsonsafe
OWN_JSON = {"jsonsafe.py"}


def test_no_json_is_read_around_jsonsafe():
    """`json.load(s)` is called only inside ila.jsonsafe: every JSON ila reads, its own outputs too, is bounded."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in OWN_JSON:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("load", "loads") and ast.unparse(node.func.value) == "json":
                calls.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not calls, calls


# ------------------------------------------------------------------ CLIP weights from a cache

HF_REPO = "models--timm--vit_base_patch32_clip_224.openai"       # where open_clip's ViT-B-32:openai lives on the Hub


class _Payload:
    """Unpickling this creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _clip_state() -> dict[str, torch.Tensor]:
    from test_safe_load import MiniCLIP

    return MiniCLIP().state_dict()


def _hf_cache(root: Path, filename: str, data: bytes) -> Path:
    """The Hugging Face cache layout: refs/main naming a snapshot that holds `filename`."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = root / HF_REPO
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    (repo / "snapshots" / sha).mkdir(parents=True)
    path = repo / "snapshots" / sha / filename
    path.write_bytes(data)
    return path


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """An empty Hugging Face cache and an empty home (so ~/.cache/clip is empty); any download fails the test."""
    from huggingface_hub import constants
    import open_clip.pretrained

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    def no_download(*args, **kwargs):
        raise AssertionError("a test tried to download CLIP weights")
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    return cache, tmp_path / "home"


def test_clip_name_reads_the_hf_cached_file(empty_caches, tmp_path):
    cache, _ = empty_caches
    state = _clip_state()
    torch.save(state, tmp_path / "weights.bin")
    cached = _hf_cache(cache, "open_clip_pytorch_model.bin", (tmp_path / "weights.bin").read_bytes())
    weights = read_clip_weights("ViT-B-32:openai")
    assert set(weights) == set(state) and torch.equal(weights["visual.conv1.weight"], state["visual.conv1.weight"])
    model = ila.from_clip("ViT-B-32:openai", num_frames=2)
    assert torch.equal(model.visual.conv1.weight, state["visual.conv1.weight"])
    assert cached.exists()


@pytest.mark.parametrize("where", ["hf-cache", "openai-cache"])
def test_a_malicious_cached_clip_file_is_refused(empty_caches, tmp_path, where):
    """A pickle planted in the cache open_clip's name resolves to: refused by ila's reader, nothing runs."""
    cache, home = empty_caches
    victim = tmp_path / "victim"
    torch.save({**_clip_state(), "config": _Payload(str(victim))}, tmp_path / "evil.bin")
    data = (tmp_path / "evil.bin").read_bytes()
    if where == "hf-cache":
        planted = _hf_cache(cache, "open_clip_pytorch_model.bin", data)
    else:
        planted = home / ".cache" / "clip" / "ViT-B-32.pt"
        planted.parent.mkdir(parents=True)
        planted.write_bytes(data)
    name = "ViT-B-32:openai"
    for call in (lambda: ila.from_clip(name, num_frames=2), lambda: read_clip_weights(name),
                 lambda: ila.read_weights(name), lambda: ila.create_model("tiny", weights=name)):
        with pytest.raises(FileRefused) as err:
            call()
        assert str(planted) in str(err.value) and "which could run code" in str(err.value), str(err.value)
        assert "\n" not in str(err.value)
    assert not victim.exists()
    torch.load(planted, weights_only=False)              # the file is live: unpickling it does run its code
    assert victim.exists()


def test_no_weights_are_read_by_torch_or_open_clip():
    """Every weight file goes through ila.safe_load or safetensors: no `torch.load`, `torch.jit.load`,
    `pickle.load(s)`, `np.load(allow_pickle=True)` nor open_clip model creation with weights anywhere in ila."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            if name in ("torch.load", "torch.jit.load", "jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler",
                        "Unpickler") or name.endswith(("create_model_and_transforms", "create_model_from_pretrained",
                                                       "open_clip.create_model", "load_openai_model")) \
                    or (name in ("np.load", "numpy.load") and keywords.get("allow_pickle") != "False") \
                    or ("pretrained" in keywords and "create_model" in name):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}")
    assert not found, found
