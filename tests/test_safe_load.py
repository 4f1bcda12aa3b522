"""`ila.safe_load`: every weight file is read without running anything in it, through every entry point.

TorchScript archives (OpenAI's CLIP .pt files) give exactly their module's `state_dict()` without
`torch.jit.load`; files with live payloads are refused or read inertly by `train.init`, `--resume`, `from_clip`,
`load_release`, `load_checkpoint` and `ila predict/eval/convert`; files whose declared contents do not fit their
size are refused before memory is taken; malformed files give one line.
"""
import collections
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import textwrap
import time
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import ila
from ila.cli import main
from ila.config import load_config
from ila.engine import checkpoint as ckpt
from ila.weights import checkpoint as stored
from ila.errors import UserError
from ila.weights.clip import read_clip_weights
from ila.safe_load import FileRefused, ScriptObject, load, script_state_dict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


# ------------------------------------------------------------------ a CLIP-shaped model, OpenAI's layout

class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Block(nn.Module):
    def __init__(self, width: int, attn_mask: torch.Tensor | None = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(collections.OrderedDict(
            [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)
        self.attn_mask = attn_mask      # a plain tensor attribute, as in OpenAI's code: not in state_dict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=self.attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Visual(nn.Module):
    def __init__(self, width=64, patch=8, res=32, layers=2, embed=64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.positional_embedding = nn.Parameter(torch.randn((res // patch) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[Block(width) for _ in range(layers)])
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, embed))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.transformer.resblocks(self.ln_pre(x).transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class MiniCLIP(nn.Module):
    """OpenAI's CLIP layout, tiny: a visual tower, a text transformer with a causal mask attribute."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.visual = Visual()
        mask = torch.full((77, 77), float("-inf")).triu(1)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*[Block(64, mask) for _ in range(2)])
        self.token_embedding = nn.Embedding(49408, 64)
        self.positional_embedding = nn.Parameter(torch.randn(77, 64))
        self.ln_final = nn.LayerNorm(64)
        self.text_projection = nn.Parameter(torch.randn(64, 64))
        self.logit_scale = nn.Parameter(torch.ones([]) * 4.6)
        self.register_buffer("counter", torch.arange(3))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.visual(image)


def _same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and
                                      torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("how", ["script", "trace", "script-half"])
def test_torchscript_archive_gives_exactly_its_state_dict(tmp_path, how):
    model = MiniCLIP().eval()
    image = torch.randn(1, 3, 32, 32)
    scripted = torch.jit.trace(model, image, check_trace=False) if how == "trace" else torch.jit.script(model)
    if how == "script-half":
        scripted = scripted.half()
    scripted.save(str(tmp_path / "clip.pt"))
    expected = scripted.state_dict()                      # what torch.jit.load(...).state_dict() would give
    assert not any(k.endswith("attn_mask") for k in expected)
    read = load(tmp_path / "clip.pt")
    assert isinstance(read, ScriptObject)
    assert _same(script_state_dict(read), expected)
    weights = read_clip_weights(tmp_path / "clip.pt")      # the CLIP entry point: floats as float32
    assert set(weights) == set(expected) and all(torch.equal(weights[k], expected[k].float()) for k in expected
                                                 if expected[k].is_floating_point())


def test_torchscript_clip_starts_the_same_model_as_its_state_dict(tmp_path):
    model = MiniCLIP().eval()
    torch.jit.script(model).save(str(tmp_path / "clip.pt"))
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    models = []
    for name in ("clip.pt", "plain.pt"):
        torch.manual_seed(0)                                  # the same start for the new (non-CLIP) modules
        models.append(ila.from_clip(tmp_path / name, num_frames=2).state_dict())
    assert _same(*models)


def test_legacy_and_zip_files_read_like_torch_load(tmp_path):
    sd = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).half().state_dict()
    sd["view"] = sd["0.weight"][1:, ::2]                     # a strided view sharing its storage
    sd["extra"] = {"epoch": 3, "names": ["a", "b"], "set": {1, 2}, "size": torch.Size([2, 3])}
    for legacy in (False, True):
        path = tmp_path / f"sd{legacy}.pt"
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        got, want = load(path), torch.load(path, weights_only=True)
        assert got["extra"] == want["extra"]
        tensors = [k for k in want if torch.is_tensor(want[k])]
        assert _same({k: got[k] for k in tensors}, {k: want[k] for k in tensors})
        assert got["view"].stride() == want["view"].stride()
        assert got["view"].untyped_storage().data_ptr() == got["0.weight"].untyped_storage().data_ptr()


# ------------------------------------------------------------------ live payloads x entry points

class _Payload:
    """Unpickling this creates a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _fake_yacs():
    """A stand-in `yacs.config` module, so a test can pickle a CfgNode as the authors' containers do."""
    module = types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    module.CfgNode = CfgNode
    return {"yacs": types.ModuleType("yacs"), "yacs.config": module}


_EVIL_SCRIPT = '''
import sys, torch
from torch import nn
from typing import Tuple

class Evil(nn.Module):
    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.weight = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, torch.Tensor, bool]:
        return (self.path, self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, torch.Tensor, bool]) -> None:
        self.path, self.weight, self.training = state[0], state[1], state[2]
        torch.save(state[1], state[0])        # runs on torch.jit.load: writes the victim file

if sys.argv[3] == "clip":       # a CLIP-shaped archive (OpenAI's layout) carrying the trap in a submodule
    sys.path.insert(0, sys.argv[4])
    from test_safe_load import MiniCLIP
    model = MiniCLIP().eval()
    model.visual.trap = Evil(sys.argv[2])
    torch.jit.script(model).save(sys.argv[1])
else:
    torch.jit.script(Evil(sys.argv[2])).save(sys.argv[1])
'''


def make_payload(kind: str, path: Path, victim: Path) -> Path:
    """A file of the given kind whose unsafe loading creates `victim`."""
    tensors = {"w": torch.zeros(2)}
    if kind.startswith("torchscript"):
        script = path.parent / "make_evil.py"
        script.write_text(_EVIL_SCRIPT)
        shape = "clip" if kind == "torchscript-clip" else "bare"
        subprocess.run([sys.executable, str(script), str(path), str(victim), shape, str(Path(__file__).parent)],
                       check=True, capture_output=True)
    elif kind in ("zip", "legacy"):
        torch.save({"model": tensors, "config": _Payload(str(victim))}, path,
                   _use_new_zipfile_serialization=kind == "zip")
    elif kind == "raw-pickle":
        path.write_bytes(pickle.dumps(_Payload(str(victim)), protocol=2))
    elif kind == "ila":
        cfg = load_config("tiny")
        state = {"format": stored.FORMAT, "config": cfg.to_dict(), "class_names": ["a"],
                 "model": ila.build_model(cfg.model).state_dict(), "train_state": {"rng": [_Payload(str(victim))]}}
        torch.save(state, path)
    elif kind == "yacs":
        saved = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
        sys.modules.update(_fake_yacs())
        try:
            node = sys.modules["yacs.config"].CfgNode({"MODEL": {"ARCH": "ViT-B/32"}, "TRAIN": _Payload(str(victim))})
            torch.save({"model": {"visual.message_attn.prediction_block.0.weight": torch.zeros(1)}, "config": node,
                        "epoch": 3}, path)
        finally:
            for k, v in saved.items():
                if v is None:
                    sys.modules.pop(k, None)
                else:
                    sys.modules[k] = v
    return path


PAYLOADS = ["torchscript", "torchscript-clip", "zip", "legacy", "raw-pickle", "ila", "yacs"]


def _unsafe_load(kind: str, path: Path):
    if kind.startswith("torchscript"):
        torch.jit.load(str(path))
    elif kind == "raw-pickle":
        pickle.loads(path.read_bytes())
    elif kind == "yacs":
        saved = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
        sys.modules.update(_fake_yacs())
        try:
            torch.load(path, weights_only=False)
        finally:
            for k, v in saved.items():
                sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    else:
        torch.load(path, weights_only=False)


@pytest.mark.parametrize("kind", PAYLOADS)
def test_each_payload_is_live(tmp_path, kind):
    """The matrix below can fail: plain unsafe loading of each payload file does create its victim file."""
    victim = tmp_path / "victim"
    path = make_payload(kind, tmp_path / "evil.pt", victim)
    assert not victim.exists()
    _unsafe_load(kind, path)
    assert victim.exists()


@pytest.fixture(scope="module")
def payloads(tmp_path_factory):
    root = tmp_path_factory.mktemp("payloads")
    return {kind: make_payload(kind, root / f"{kind}.pt", root / f"victim-{kind}") for kind in PAYLOADS}


def _video(motion):
    return motion / "val" / sorted(os.listdir(motion / "val"))[0]


def _data(motion):
    return [f"data.root={motion}", f"data.train_list={motion}/train.txt", f"data.val_list={motion}/val.txt",
            f"data.class_names={motion}/classes.txt"]


ENTRY_POINTS = {
    "train.init": lambda f, m, out: ["train", "--config", CONFIGS / "tiny.yaml", "--output", out / "run", "--set",
                                     *_data(m), f"train.init={f}", "train.epochs=1"],
    "--resume": lambda f, m, out: ["train", "--resume", f],
    "predict": lambda f, m, out: ["predict", "--checkpoint", f, _video(m)],
    "eval": lambda f, m, out: ["eval", "--checkpoint", f, "--set", *_data(m), "--output", out / "eval"],
    "convert": lambda f, m, out: ["convert", f, out / "converted.pt"],
    "from_clip": lambda f, m, out: lambda: ila.from_clip(f, num_frames=2),
    "load_release": lambda f, m, out: lambda: ila.load_release(f),
    "load_checkpoint": lambda f, m, out: lambda: ila.load_checkpoint(f),
    "read_clip_weights": lambda f, m, out: lambda: read_clip_weights(f),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("kind", PAYLOADS)
def test_no_payload_runs_through_any_entry_point(payloads, motion, tmp_path, capsys, kind, entry):
    path = payloads[kind]
    victim = path.parent / f"victim-{kind}"
    call = ENTRY_POINTS[entry](path, motion, tmp_path)
    if isinstance(call, list):                       # the command line: exit status 2 and one line
        code = main([str(a) for a in call])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and "Traceback" not in err and "\x1b" not in err, err
    else:                                            # the library: refused with a UserError, or read inertly
        try:
            call()
        except UserError as e:
            assert "\n" not in str(e)
    assert not victim.exists(), f"{entry} ran the {kind} payload"


def test_a_trapped_clip_archive_is_read_inertly(payloads):
    """OpenAI-layout CLIP with a submodule whose __setstate__ writes a file: from_clip builds the model from its
    weights and the trap never runs (a module with its own __setstate__ keeps its raw state, uninterpreted)."""
    path = payloads["torchscript-clip"]
    model = ila.from_clip(path, num_frames=2)
    clean = MiniCLIP().state_dict()
    assert torch.equal(model.visual.conv1.weight, clean["visual.conv1.weight"])
    root = load(path)
    trap = root.attributes["visual"].attributes["trap"]
    assert trap.qualified_name.endswith("Evil") and isinstance(trap.state, tuple)   # kept raw: never interpreted
    assert not any(k.startswith("visual.trap.") for k in script_state_dict(root))
    assert not (path.parent / "victim-torchscript-clip").exists()


def test_refusal_names_what_the_file_asked_for(payloads):
    with pytest.raises(FileRefused, match=r"refusing to load .*: it names io\.open, which could run code"):
        load(payloads["zip"])


# ------------------------------------------------------------------ sizes checked before memory is taken

class _Ref:
    def __init__(self, numel, key="0"):
        self.numel, self.key = numel, key


class _BigTensor:
    """Pickles as a float tensor of `numel` elements over storage `key` (what torch.save writes)."""

    def __init__(self, numel, key="0"):
        self.numel, self.key = numel, key

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (_Ref(self.numel, self.key), 0, (self.numel,), (1,), False, collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    legacy = False

    def persistent_id(self, obj):
        if isinstance(obj, _Ref):
            return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel) + ((None,) if self.legacy else ())
        return None


def _pickled(obj, legacy=False) -> bytes:
    buf = io.BytesIO()
    pickler = _Pickler(buf, protocol=2)
    pickler.legacy = legacy
    pickler.dump(obj)
    return buf.getvalue()


def _ila_like(tensors):
    return {"format": stored.FORMAT, "config": load_config("tiny").to_dict(), "class_names": [],
            "model": tensors, "train_state": None}


HUGE = 700_000_000          # 2.8 GB of float32


def _central_directory(raw: bytes) -> tuple[int, int]:
    eocd = raw.rfind(b"PK\x05\x06")
    return struct.unpack_from("<I", raw, eocd + 16)[0], eocd


def _archive(path: Path, obj, records: dict[str, bytes]) -> None:
    """A torch zip file: version 3, `obj` pickled as data.pkl, and the storage records `archive/data/NAME`."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data.pkl", _pickled(obj))
        for name, data in records.items():
            z.writestr(f"archive/data/{name}", data)


def make_bombs(root: Path) -> dict[str, Path]:
    """Files of about 1 MB (or less) that declare gigabytes."""
    bombs = {name: root / f"{name}.pt" for name in ("compressed", "declared-size", "numel", "overlap", "legacy")}
    # a deflated record: 0.5 MB that inflates to 512 MB (torch.load inflates it before checking anything)
    with zipfile.ZipFile(bombs["compressed"], "w") as z:
        z.writestr("archive/version", "3\n")
        z.writestr("archive/data.pkl", _pickled(_ila_like({"w": _BigTensor(2 ** 27)})))
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 24)
            for _ in range(32):
                f.write(chunk)
    # a stored record whose directory entry declares 2.8 GB that are not there
    _archive(bombs["declared-size"], _ila_like({"w": _BigTensor(HUGE)}), {"0": bytes(1 << 20)})
    raw = bytearray(bombs["declared-size"].read_bytes())
    last = raw.rfind(b"PK\x01\x02")                       # the directory entry of archive/data/0
    struct.pack_into("<II", raw, last + 20, 4 * HUGE, 4 * HUGE)
    bombs["declared-size"].write_bytes(bytes(raw))
    # a storage declaring 2.8 GB over a 1 MB record
    _archive(bombs["numel"], _ila_like({"w": _BigTensor(HUGE)}), {"0": bytes(1 << 20)})
    # 2000 directory entries (2000 storages of 1 MB) that all point at the same 1 MB record
    keys = [f"{i:04d}" for i in range(2000)]
    _archive(bombs["overlap"], _ila_like({k: _BigTensor(1 << 18, k) for k in keys}), {"0000": bytes(1 << 20)})
    raw = bombs["overlap"].read_bytes()
    start, eocd = _central_directory(raw)
    entries = raw[start:eocd]
    one = entries[entries.rfind(b"PK\x01\x02"):]
    entries += b"".join(one.replace(b"data/0000", f"data/{k}".encode()) for k in keys[1:])
    end = bytearray(raw[eocd:eocd + 22])
    count = struct.unpack_from("<H", end, 10)[0] + len(keys) - 1
    struct.pack_into("<HHI", end, 8, count, count, len(entries))
    bombs["overlap"].write_bytes(raw[:start] + entries + bytes(end))
    # a legacy torch.save file declaring a 2.8 GB storage
    legacy = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, legacy, protocol=2)
    legacy.write(_pickled(_ila_like({"w": _BigTensor(HUGE)}), legacy=True))
    pickle.dump(["0"], legacy, protocol=2)
    legacy.write(struct.pack("<q", HUGE) + bytes(1 << 20))
    bombs["legacy"].write_bytes(legacy.getvalue())
    # a pickle calling torch.Tensor(1e9) (4 GB), and one calling torch.FloatStorage(1e9)
    for name, cls in (("tensor-call", b"Tensor"), ("storage-call", b"FloatStorage")):
        bombs[name] = root / f"{name}.pt"
        with zipfile.ZipFile(bombs[name], "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02ctorch\n" + cls + b"\nJ\x00\xca\x9a;\x85R.")
    # a legacy file whose pickle declares a 1 TB bytes object (BINBYTES8)
    bombs["legacy-bytes8"] = root / "legacy-bytes8.pt"
    legacy = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, legacy, protocol=2)
    legacy.write(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + bytes(1 << 20))
    bombs["legacy-bytes8"].write_bytes(legacy.getvalue())
    # an expanded tensor: 2.5e9 elements over one (torch.load gives it; `.float()` or a copy would make it real)
    bombs["expanded"] = root / "expanded.pt"
    torch.save({"visual.conv1.weight": torch.zeros(1).expand(50_000, 50_000)}, bombs["expanded"])
    return bombs


def make_model_bombs(root: Path) -> dict[str, tuple[Path, str]]:
    """Small files whose weights or config describe a model of tens of GiB: (file, the entry point it aims at)."""
    clip = {"visual.conv1.weight": torch.zeros(16384, 3, 8, 0), "visual.positional_embedding": torch.zeros(17, 0),
            "visual.proj": torch.zeros(0, 64), "visual.transformer.resblocks.0.ln_1.weight": torch.zeros(0)}
    torch.save(clip, root / "zero-size-clip.pt")
    cfg = load_config("tiny")
    state = {"format": stored.FORMAT, "config": cfg.to_dict(), "class_names": [], "train_state": None,
             "model": ila.build_model(cfg.model).state_dict()}
    state["config"]["model"]["vision_width"] = 16384      # the largest width the config allows
    torch.save(state, root / "huge-config.pt")
    return {"zero-size CLIP tensors": (root / "zero-size-clip.pt", "from_clip"),
            "ila config of 30 GiB": (root / "huge-config.pt", "load_checkpoint")}


_MEASURE = textwrap.dedent("""
    import json, sys
    import torch, ila
    from ila.weights.checkpoint import read_checkpoint
    from ila.errors import UserError
    from ila.weights.clip import read_clip_weights

    def peak_mb():   # this process's peak RSS (VmHWM: getrusage's ru_maxrss starts at the parent's peak)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024

    read_checkpoint(sys.argv[1])                       # warm every code path on a good checkpoint
    with open("/proc/self/clear_refs", "w") as f:      # the peak restarts from the current RSS
        f.write("5")
    base, out = peak_mb(), {}
    for arg in sys.argv[2:]:                            # PATH (every entry point) or PATH::ENTRY (that one)
        path, _, only = arg.partition("::")
        errors = {}
        for call in (ila.load_checkpoint, ila.load_release, read_clip_weights, ila.from_clip):
            if only and call.__name__ != only:
                continue
            try:
                call(path)
                errors[call.__name__] = None
            except UserError as e:
                errors[call.__name__] = str(e)
        out[arg] = {"growth_mb": peak_mb() - base, "errors": errors}
    probe = torch.ones(400 << 18)                        # the instrument works: a 400 MB allocation shows
    out["probe_mb"] = peak_mb() - base
    print(json.dumps(out))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak RSS is read from Linux's /proc")
def test_files_declaring_more_than_they_hold_are_refused_before_allocating(tmp_path):
    bombs = make_bombs(tmp_path)
    models = make_model_bombs(tmp_path)
    sizes = {k: p.stat().st_size for k, p in bombs.items()} | {k: p.stat().st_size for k, (p, _) in models.items()}
    assert max(sizes.values()) < 1_500_000, sizes
    good = tmp_path / "good.pt"
    cfg = load_config("tiny")
    ckpt.save_checkpoint(good, ila.build_model(cfg.model), cfg, [])
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    paths = [*bombs.values(), *(f"{p}::{entry}" for p, entry in models.values())]
    run = subprocess.run([sys.executable, "-c", _MEASURE, str(good), *map(str, paths)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.splitlines()[-1])
    assert result.pop("probe_mb") > 200                  # the measurement would see an allocation of that size
    for name, path in bombs.items():                     # refused by the reader, whatever reads them
        measured = result[str(path)]
        assert all(e is not None and "\n" not in e for e in measured["errors"].values()), (name, measured)
        if name != "legacy-bytes8":                      # (that one is simply truncated once reads are bounded)
            assert all("refusing to load" in e for e in measured["errors"].values()), (name, measured)
        assert measured["growth_mb"] < 200, (name, measured)
    for name, (path, entry) in models.items():           # refused before the model is built
        measured = result[f"{path}::{entry}"]
        assert "refusing to build it" in measured["errors"][entry] and "\n" not in measured["errors"][entry]
        assert measured["growth_mb"] < 200, (name, measured)


def test_a_tensor_reaching_outside_its_storage_is_refused(tmp_path):
    class Strided(_BigTensor):
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, (_Ref(4), 2, (2, 2), (2, 1), False, collections.OrderedDict()))

    _archive(tmp_path / "x.pt", {"w": Strided(4)}, {"0": bytes(16)})
    with pytest.raises(FileRefused, match="reaches outside its storage"):
        load(tmp_path / "x.pt")


def test_setting_a_tensors_state_is_refused(tmp_path):
    """Tensor.__setstate__ is code (it can re-point the tensor or install hooks): BUILD is only for stand-ins."""
    class WithState(_BigTensor):
        def __reduce__(self):
            return super().__reduce__() + ((False, None, collections.OrderedDict()),)

    _archive(tmp_path / "x.pt", {"w": WithState(4)}, {"0": bytes(16)})
    with pytest.raises(FileRefused, match="sets the state of a Tensor"):
        load(tmp_path / "x.pt")


# ------------------------------------------------------------------ malformed files: one line each

def _good_state():
    cfg = load_config("tiny")
    model = ila.build_model(cfg.model)
    return {"format": stored.FORMAT, "config": cfg.to_dict(), "class_names": ["a", "b"],
            "model": model.state_dict(), "train_state": None}


def _malformed(tmp_path: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """(files no reader can read, ila checkpoints with a missing or mistyped entry)."""
    files, damaged = {}, {}
    good = tmp_path / "good.pt"
    torch.save(_good_state(), good)
    data = good.read_bytes()
    files["truncated zip"] = tmp_path / "truncated.pt"
    files["truncated zip"].write_bytes(data[: len(data) // 2])
    files["cut after the directory start"] = tmp_path / "cut.pt"
    files["cut after the directory start"].write_bytes(data[:-10])
    files["random bytes"] = tmp_path / "random.pt"
    files["random bytes"].write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
                                      .to(torch.uint8).numpy().tobytes())
    files["empty file"] = tmp_path / "empty.pt"
    files["empty file"].write_bytes(b"")
    files["directory"] = tmp_path / "a-directory.pt"
    files["directory"].mkdir()
    files["text file"] = tmp_path / "notes.pt"
    files["text file"].write_text("model: big\nconfig: {}\n")
    files["zip that is not torch's"] = tmp_path / "other.zip"
    with zipfile.ZipFile(files["zip that is not torch's"], "w") as z:
        z.writestr("readme.txt", "hello")
    files["flipped record byte"] = tmp_path / "flipped.pt"
    flipped = bytearray(data)
    at = data.find(b"PK\x03\x04", data.find(b"data/0")) - 20      # inside the first storage's bytes
    flipped[at] ^= 0xFF
    files["flipped record byte"].write_bytes(bytes(flipped))
    files["escape codes in a name"] = tmp_path / "bad\x1b[31mred.pt"
    files["escape codes in a name"].write_text("x")
    broken = {
        "no config": lambda s: s.pop("config"),
        "config is a list": lambda s: s.__setitem__("config", [1, 2]),
        "config is empty": lambda s: s.__setitem__("config", {}),
        "config lacks a model key": lambda s: s["config"]["model"].pop("vision_width"),
        "no model": lambda s: s.pop("model"),
        "model is a string": lambda s: s.__setitem__("model", "weights"),
        "model holds a non-tensor": lambda s: s["model"].__setitem__("visual.conv1.weight", [1.0]),
        "no class_names": lambda s: s.pop("class_names"),
        "class_names is a string": lambda s: s.__setitem__("class_names", "a,b"),
        "class_names holds numbers": lambda s: s.__setitem__("class_names", [1, 2]),
        "train_state is a list": lambda s: s.__setitem__("train_state", [1]),
        "config has a bad value": lambda s: s["config"]["model"].__setitem__("vision_width", "wide"),
    }
    for name, damage in broken.items():
        state = _good_state()
        damage(state)
        damaged[name] = tmp_path / (re.sub(r"\W", "_", name) + ".pt")
        torch.save(state, damaged[name])
    return files, damaged


def test_every_malformed_checkpoint_gives_one_line(tmp_path, motion, capsys):
    files, damaged = _malformed(tmp_path)
    for name, path in {**files, **damaged}.items():
        for call in (ila.load_checkpoint, ila.load_release, read_clip_weights) if name in files else \
                (ila.load_checkpoint, stored.read_checkpoint):
            with pytest.raises(UserError) as err:
                call(path)
            assert "\n" not in str(err.value) and "\x1b" not in str(err.value), (name, str(err.value))
        code = main(["predict", "--checkpoint", str(path), str(_video(motion))])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert "\x1b" not in err and len(err) < 400, (name, err)


def _resumable_state():
    state = _good_state()
    rng = ckpt.rng_state()
    state["train_state"] = {"epoch": 1, "batch_in_epoch": 0, "step": 2, "align_delta": 0.2, "best_top1": None,
                            "steps_per_epoch": 2, "total_steps": 4, "optimizer": {"state": {}, "param_groups": []},
                            "scaler": {}, "rng": [rng], "world": 1}
    return state


@pytest.mark.parametrize("damage", [
    lambda ts: ts.pop("optimizer"), lambda ts: ts.__setitem__("step", "2"), lambda ts: ts.__setitem__("rng", []),
    lambda ts: ts["rng"][0].pop("torch"), lambda ts: ts["rng"][0].__setitem__("numpy", torch.zeros(3)),
    lambda ts: ts.__setitem__("optimizer", {"state": [], "param_groups": 1}), lambda ts: ts.__setitem__("epoch", -1),
])
def test_a_damaged_training_state_cannot_be_resumed_but_still_evaluates(tmp_path, capsys, damage):
    state = _resumable_state()
    torch.save(state, tmp_path / "fine.pt")
    stored.read_checkpoint(tmp_path / "fine.pt", resume=True)
    damage(state["train_state"])
    torch.save(state, tmp_path / "damaged.pt")
    with pytest.raises(UserError, match="damaged ila checkpoint: `train_state"):
        stored.read_checkpoint(tmp_path / "damaged.pt", resume=True)
    ila.load_checkpoint(tmp_path / "damaged.pt")           # the weights are fine: eval and predict still work
    code = main(["train", "--resume", str(tmp_path / "damaged.pt")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "train_state" in err, err


# ------------------------------------------------------------------ bounded reading: time and memory follow the size

def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


def _str(s: str) -> bytes:
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _doubling(levels: int, leaf: bytes, build: bytes) -> bytes:
    """Opcodes leaving on the stack a value of `levels` levels, each level holding the previous one twice
    (`build` makes it from two memo fetches): 2^levels leaves described in ~7 bytes a level."""
    out = leaf + _put(0) + b"0"
    for i in range(1, levels):
        out += build.replace(b"A", _get(i - 1)) + _put(i) + b"0"
    return out + _get(levels - 1)


def _tuple_dag(levels: int) -> bytes:
    return _doubling(levels, b"K\x01K\x01\x86", b"AA\x86")


def _list_dag(levels: int) -> bytes:
    return _doubling(levels, b"]", b"](AAe")


def _laughs(fan: int = 10, levels: int = 9) -> bytes:
    """The billion laughs: a string, a list of `fan` fetches of it, a list of `fan` fetches of that..."""
    out = _str("lol" * 20) + _put(0) + b"0"
    for i in range(1, levels):
        out += b"](" + _get(i - 1) * fan + b"e" + _put(i) + b"0"
    return out + _get(levels - 1)


def _colliding_pairs(n: int) -> list[tuple[int, int]]:
    """`n` distinct tuples (a, b) of small integers with one hash (CPython's tuple hash is invertible in its last
    item, and an integer below 2**61-1 hashes to itself): a dict of them takes n^2 comparisons to fill."""
    m = 1 << 64
    p1, p2, p5 = 11400714785074694791, 14029467366897019727, 2870177450012600261
    rotl = lambda x, r: ((x << r) | (x >> (64 - r))) % m          # noqa: E731
    target = hash((0, 0)) % m
    before_len = (target - (2 ^ (p5 ^ 3527539))) % m
    acc2 = rotl(before_len * pow(p1, -1, m) % m, 33)               # undo the last multiply and rotate-left-31
    pairs = []
    for a in range(1, 10 * n):
        acc1 = rotl((p5 + (hash(a) % m) * p2) % m, 31) * p1 % m
        lane = (acc2 - acc1) * pow(p2, -1, m) % m
        b = lane if lane < (1 << 61) - 1 else lane - m if lane > m - (1 << 61) + 1 else None
        if b is not None and b != -1 and hash((a, b)) == hash((0, 0)):
            pairs.append((a, b))
            if len(pairs) == n:
                return pairs
    raise AssertionError("no colliding tuples found")


def _flood(n: int) -> bytes:
    items = b"".join(b"(\x8a\x08" + struct.pack("<q", a) + b"\x8a\x08" + struct.pack("<q", b) + b"tK\x00"
                     for a, b in _colliding_pairs(n))
    return b"}(" + items + b"u"


def _self_holding() -> bytes:
    return b"]" + _put(0) + _get(0) + b"a"                     # a list appended to itself


def _changed_after_placing() -> bytes:
    # L = []; D = [L, L]; then L grows by 200 items after D counted it: D would unfold to far more than counted
    return b"]" + _put(0) + b"0](" + _get(0) + _get(0) + b"e" + _put(1) + b"0" + _get(0) + b"(" + b"N" * 200 + b"e0" \
        + _get(1)


ATTACKS = {     # name: (pickle opcodes after PROTO 2, leaving one value; what the refusal says)
    "tuple DAG as a dict key (80 levels)": (b"}" + _tuple_dag(80) + b"K\x00s", "unfold to more than"),
    "small tuple DAG as a dict key": (b"}" + _tuple_dag(10) + b"K\x00s", "as a dict key"),
    "tuple DAG in a frozenset": (b"(" + _tuple_dag(10) + b"\x91", "as a dict key or set item"),
    "tuple DAG in set(...) (protocol 2)": (b"c__builtin__\nset\n(" + _tuple_dag(10) + b"l\x85R", "set item"),
    "tuple DAG as an OrderedDict key": (b"ccollections\nOrderedDict\n((" + _tuple_dag(10) + b"K\x00tl\x85R",
                                        "as a dict key"),
    "list DAG as a value (80 levels)": (b"}" + _str("model") + _list_dag(80) + b"s", "unfold to more than"),
    "memo billion laughs": (_laughs(), "billion laughs"),
    "deep nesting (50,000 lists)": (b"]" * 50_000 + b"a" * 49_999, "nest more than"),
    "deep nesting (tuples)": (b"N" + b"\x85" * 50_000, "nest more than"),
    "a list holding itself": (_self_holding(), "inside itself"),
    "a list changed after it was placed": (_changed_after_placing(), "after placing it"),
    "keys crafted to share one hash": (_flood(64), "share one hash"),
    "a huge integer as a key": (b"}\x8a\x40" + b"\x01" * 64 + b"K\x00s", "as a dict key"),
}


def _raw_archive(path: Path, body: bytes) -> Path:
    """A torch zip archive whose data.pkl is PROTO 2, `body`, STOP."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + body + b".")
        z.writestr("archive/version", "3\n")
    return path


def test_the_attack_pickles_are_what_they_claim():
    """Plain pickle builds them (so the refusals below are the reader's doing, not malformed input)."""
    assert len(pickle.loads(b"\x80\x02" + _laughs(3, 4) + b".")) == 3
    deep = pickle.loads(b"\x80\x02" + _tuple_dag(6) + b".")
    assert deep[0] is deep[1] and len(str(deep)) > 2 ** 6
    pairs = _colliding_pairs(64)
    assert len(set(pairs)) == 64 and len({hash(p) for p in pairs}) == 1
    assert len(pickle.loads(b"\x80\x02" + _flood(64) + b".")) == 64
    lst = pickle.loads(b"\x80\x02" + _self_holding() + b".")
    assert lst[0] is lst
    assert pickle.loads(b"\x80\x02" + _changed_after_placing() + b".")[0] == [None] * 200


@pytest.mark.parametrize("name", list(ATTACKS))
def test_amplifying_pickles_are_refused_in_well_under_a_second(tmp_path, name):
    body, says = ATTACKS[name]
    path = _raw_archive(tmp_path / "attack.pt", body)
    assert path.stat().st_size < 110_000
    for call in (load, ila.read_weights):
        start = time.perf_counter()
        with pytest.raises(UserError) as err:
            call(path)
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0, (name, call.__name__, elapsed)
        assert isinstance(err.value, FileRefused) and says in str(err.value), (name, str(err.value))
        assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_the_hash_dag_needs_the_limits(tmp_path):
    """Without the key rule, the 80-level tuple DAG as a key would hash for 2^80 steps: in a subprocess with a
    2-second limit, Python's own unpickler does not finish it."""
    path = tmp_path / "dag.pkl"
    path.write_bytes(b"\x80\x02}" + _tuple_dag(80) + b"K\x00s.")
    code = f"import pickle; pickle.loads(open({str(path)!r}, 'rb').read())"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", code], timeout=2, capture_output=True)


def _measured(monkeypatch) -> list:
    """Records (pickle bytes, cells, largest weight, deepest nesting) of every pickle the reader reads."""
    from ila import safe_load

    seen, original = [], safe_load._Unpickler.load

    def load_and_measure(self):
        result = original(self)
        seen.append((self._nbytes, self._cells, max(self._weight.values(), default=0),
                     max(self._depth.values(), default=0)))
        return result
    monkeypatch.setattr(safe_load._Unpickler, "load", load_and_measure)
    return seen


def test_real_checkpoints_stay_far_inside_the_budgets(tmp_path, monkeypatch):
    """ila's own checkpoints (with a training state), a TorchScript CLIP archive, a large state dict and the
    authors' release container use a small fraction of each budget, per byte of pickle (the floors aside)."""
    from ila import safe_load

    files = {}
    state = _resumable_state()
    files["ila checkpoint"] = tmp_path / "ila.pt"
    torch.save(state, files["ila checkpoint"])
    files["TorchScript CLIP"] = tmp_path / "clip.pt"
    torch.jit.script(MiniCLIP().eval()).save(str(files["TorchScript CLIP"]))
    files["8,000 tensors, zip"] = tmp_path / "many.pt"
    many = {f"blocks.{i}.weight": torch.zeros(2) for i in range(8000)}
    torch.save(many, files["8,000 tensors, zip"])
    files["8,000 tensors, legacy"] = tmp_path / "many-legacy.pt"
    torch.save(many, files["8,000 tensors, legacy"], _use_new_zipfile_serialization=False)
    release = Path(os.environ.get("ILA_PARITY_FIXTURES", ROOT.parent / "shared" / "fixtures" / "official"))
    release = release / "k400_tiny_release.pth"
    if release.exists():
        files["release container"] = release
    seen = _measured(monkeypatch)
    for name, path in files.items():
        seen.clear()
        start = time.perf_counter()
        content = load(path)
        elapsed = time.perf_counter() - start
        nbytes, cells, weight, depth = max(seen)
        assert cells <= nbytes and weight <= nbytes // 2 and depth <= 20, (name, nbytes, cells, weight, depth)
        assert cells * 8 < safe_load._CELLS_PER_BYTE * nbytes and weight * 50 < safe_load._WEIGHT_PER_BYTE * nbytes
        assert elapsed < 10, (name, elapsed)
        if name.startswith("8,000"):
            assert len(content) == 8000
    assert load(files["ila checkpoint"])["train_state"]["rng"][0].keys() == state["train_state"]["rng"][0].keys()
