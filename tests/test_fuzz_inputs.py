"""Fuzzing the readers of user files: seeded random mutations of a valid Kinetics list, Kinetics CSV, SSv2
JSON (with its labels file) and YAML config, each fed to the real reader. Every outcome must be a result
that holds up (labels in range, a config that validates and reloads) or a one-line `UserError`; any other
exception is a bug to fix where it is raised.

Each case is reproducible from its seed: the failure message names the seed and the mutation.
"""
from __future__ import annotations

import io
import json
import math
import pickletools
import random
import re
import struct
import time
import zipfile

import yaml

from ila.config import config_from_dict, load_config
from ila.data.annotations import read_annotations
from ila.errors import UserError

CASES = 300

KINETICS_LIST = ("abseiling/0wR5jVB-WPk_000417_000427.mp4 0\n"
                 "air drumming/3caPS4FHFF8_000036_000046.mp4 1\n"
                 "# a comment\n"
                 "\n"
                 "answering questions/b1ZmrA6ULNA_000010_000020.mp4 2\n"
                 "abseiling/xKwQ2tG1eZo_000001_000011.mp4,0\n")
KINETICS_CSV = ("label,youtube_id,time_start,time_end,split\n"
                "abseiling,0wR5jVB-WPk,417,427,validate\n"
                "air drumming,3caPS4FHFF8,36,46,validate\n"
                "\"answering questions\",b1ZmrA6ULNA,10,20,validate\n")
SSV2_LABELS = {"Holding something next to something": "1", "Pushing something from left to right": "0",
               "Dropping something onto something": "2"}
SSV2_ENTRIES = [
    {"id": "78687", "label": "holding potato next to vicks vaporub bottle",
     "template": "Holding [something] next to [something]", "placeholders": ["potato", "bottle"]},
    {"id": "42326", "label": "pushing a pen from left to right",
     "template": "Pushing [something] from left to right", "placeholders": ["a pen"]},
    {"id": "100", "label": "dropping a ball onto a box", "template": "Dropping [something] onto [something]",
     "placeholders": ["a ball", "a box"]},
]
CONFIG_YAML = ("model:\n  preset: tiny\n  temporal: mean\n  drop_path: 0.1\n"
               "data:\n  root: videos\n  train_list: train.txt\n  class_names: [a, b, c]\n  workers: 0\n"
               "train:\n  lr: 1.0e-3\n  epochs: 3\n  warmup_epochs: 1\n  batch_size: 4\n  mixup: 0.8\n"
               "  label_smoothing: 0.1\n  seed: 7\n"
               "eval:\n  clips: 2\n  crops: 3\n"
               "name: fuzz\n")

ODD_TEXT = ["\x00", "\ufeff", "\r", "\r\n", "\x85", "\u2028", "\x0c", "\t", " ", ",", "\"", "'", "#", "[", "]",
            "{", "}", ":", "-", "é", "日本", "\U0001F600", "\udcff" if False else "\ufffd", "１", "²", "٣",
            "nan", "inf", "-inf", "1e999", "-1", "0", "99999999999999999999999", "1.5", "~", "null", "true",
            "{id}", "{0}", "{id.__class__}", "{id[0]}", "%s", "\\", "/", "../", "*", "&a", "!!python/object:os.system",
            "9" * 5000, "[" * 3000, "&a [*a]", "\\u0000", "\\ud800", "NaN", "Infinity", "1" * 25]
ODD_VALUES = [None, True, False, 0, -1, 1, 2, 3.5, -0.0, 1e308, 10**30, -10**30, float("nan"), float("inf"),
              "", " ", "x", "0", "-5", "nan", "1e999", [], [1], ["a", "a"], {}, {"a": 1}, [[[]]], "\x00",
              "9" * 5000, 2**63, -2**63 - 1, 2**32, "\ud800x"]


# ----------------------------------------------------------------------------------------------- mutations

def _text_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One random byte/line-level change of `data`, and its name."""
    kind = rng.choice(["flip", "delete", "insert", "duplicate_line", "swap_columns", "truncate", "unicode",
                       "huge_number", "empty", "drop_line", "swap_lines", "bom_crlf", "repeat"])
    n = len(data)
    if kind == "flip" and n:
        i = rng.randrange(n)
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:], kind
    if kind == "delete" and n:
        i = rng.randrange(n)
        return data[:i] + data[i + rng.randint(1, 20):], kind
    if kind == "insert":
        i = rng.randint(0, n)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:], kind
    if kind == "truncate":
        return data[:rng.randint(0, n)], kind
    if kind == "unicode":
        i = rng.randint(0, n)
        return data[:i] + rng.choice(ODD_TEXT).encode("utf-8", "surrogatepass") + data[i:], kind
    if kind == "empty":
        return rng.choice([b"", b"\n", b"   \n\n", b"\xef\xbb\xbf", b"#\n"]), kind
    if kind == "bom_crlf":
        return b"\xef\xbb\xbf" + data.replace(b"\n", b"\r\n"), kind
    if kind == "repeat":
        return data * rng.randint(2, 3), kind
    lines = data.split(b"\n")
    if kind == "duplicate_line":
        i = rng.randrange(len(lines))
        lines.insert(rng.randint(0, len(lines)), lines[i])
    elif kind == "drop_line":
        del lines[rng.randrange(len(lines))]
    elif kind == "swap_lines" and len(lines) > 1:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "swap_columns":
        i = rng.randrange(len(lines))
        sep = b"," if b"," in lines[i] else b" "
        cols = lines[i].split(sep)
        if len(cols) > 1:
            a, b = rng.sample(range(len(cols)), 2)
            cols[a], cols[b] = cols[b], cols[a]
        lines[i] = sep.join(cols)
    elif kind == "huge_number":
        i = rng.randrange(len(lines))
        words = lines[i].replace(b",", b" , ").split(b" ")
        numeric = [k for k, w in enumerate(words) if w.strip().lstrip(b"-").isdigit()] or [len(words) - 1]
        words[rng.choice(numeric)] = rng.choice([b"99999999999999999999999", b"-1", b"1e999", b"nan", b"inf",
                                                 b"-0", b"+3", b"3.0", b"0x10", b"1_000"])
        lines[i] = b" ".join(words).replace(b" , ", b",")
    return b"\n".join(lines), kind


def _leaves(obj, path=()):
    """Paths to every value of a JSON-like structure."""
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))


def _type_mutation(rng: random.Random, obj):
    """Replace one value (or the whole) of a JSON/YAML structure by a value of another type, drop a key, or
    duplicate a list item."""
    import copy

    obj = copy.deepcopy(obj)
    path = rng.choice(list(_leaves(obj)))
    value = rng.choice(ODD_VALUES)
    if not path:
        return value, "replace_root"
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    action = rng.choice(["replace", "replace", "drop", "duplicate"])
    if action == "drop":
        del parent[path[-1]]
    elif action == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[path[-1]]))
    else:
        parent[path[-1]] = value
    return obj, f"{action} {'.'.join(map(str, path))} -> {value!r}"


def _mutate_text(rng, text: str) -> tuple[bytes, str]:
    data, names = text.encode("utf-8", "surrogatepass"), []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        data, name = _text_mutation(rng, data)
        names.append(name)
    return data, "+".join(names)


def _mutate_json(rng, obj) -> tuple[bytes, str]:
    if rng.random() < 0.5:
        mutated, name = _type_mutation(rng, obj)
        return json.dumps(mutated).encode(), name      # NaN/Infinity stay (Python's json writes them)
    return _mutate_text(rng, json.dumps(obj, indent=1))


# ----------------------------------------------------------------------------------------------- checks

def _check_annotations(ann, fixed_names=None) -> None:
    """What a successful read must hold: paths, integer labels inside the class list, class names distinct."""
    assert ann.samples
    names = ann.class_names if ann.class_names is not None else fixed_names
    if names is not None:
        assert len(set(names)) == len(names) and all(isinstance(n, str) and n.strip() for n in names)
    for s in ann.samples:
        assert isinstance(s.path, str) and s.path.strip() and "\0" not in s.path
        assert type(s.label) is int and s.label >= 0
        if names is not None:
            assert s.label < len(names)
    assert len({s.path for s in ann.samples}) == len(ann.samples)        # no video counted twice


def _run(kind: str, seed: int, mutation: str, fn) -> str:
    """"ok" when `fn` succeeds, "refused" when it raises a one-line UserError, else a description of the failure."""
    mutation = mutation if len(mutation) <= 120 else mutation[:117] + "..."
    try:
        fn()
    except UserError as e:
        message = str(e)
        if "\n" in message or "\x1b" in message or not message.strip() or len(message) > 1000:
            return f"{kind} seed {seed} ({mutation}): UserError not one short clean line: {message[:300]!r}"
        return "refused"
    except Exception as e:  # noqa: BLE001 - the point of the test
        return f"{kind} seed {seed} ({mutation}): {type(e).__name__}: {e!s:.200}"
    return "ok"


def _report(outcomes: list[str]) -> None:
    failures = [o for o in outcomes if o not in ("ok", "refused")]
    assert not failures, (f"{len(failures)} inputs gave neither a sound result nor a one-line UserError:\n"
                          + "\n".join(failures[:15]))
    # the mutations must reach both sides: inputs that still read, and inputs that are refused
    assert outcomes.count("ok") >= len(outcomes) // 20 and outcomes.count("refused") >= len(outcomes) // 5, (
        outcomes.count("ok"), outcomes.count("refused"))


# ----------------------------------------------------------------------------------------------- tests

def test_fuzz_kinetics_list(tmp_path):
    failures = []
    path = tmp_path / "train.txt"
    names = ["abseiling", "air drumming", "answering questions"]
    for seed in range(CASES):
        rng = random.Random(seed)
        data, mutation = _mutate_text(rng, KINETICS_LIST)
        path.write_bytes(data)
        with_names = seed % 3 == 0

        def read():
            ann = read_annotations(str(path), root="/data", class_names=names if with_names else None)
            _check_annotations(ann, names if with_names else None)
        failures.append(_run("list", seed, mutation, read))
    _report(failures)


def test_fuzz_kinetics_csv(tmp_path):
    failures = []
    path = tmp_path / "validate.csv"
    name_files = {"txt": "abseiling\nair drumming\nanswering questions\n",
                  "csv": "id,name\n1,air drumming\n0,abseiling\n2,\"answering questions\"\n"}
    for seed in range(CASES):
        rng = random.Random(seed)
        kind = rng.choice(sorted(name_files))
        names = tmp_path / f"classes.{kind}"
        if seed % 4 == 3:                              # a damaged class-name file beside a good CSV
            data, mutation = _mutate_text(rng, name_files[kind])
            names.write_bytes(data)
            path.write_text(KINETICS_CSV)
            mutation = f"classes.{kind}: {mutation}"
        else:
            data, mutation = _mutate_text(rng, KINETICS_CSV)
            names.write_text(name_files[kind])
            path.write_bytes(data)
        fmt = "kinetics_csv" if seed % 2 else "auto"
        pattern = None if seed % 5 else "{split}/{label}/{youtube_id}_{time_start:06d}.mp4"

        def read():
            ann = read_annotations(str(path), fmt=fmt, class_names=str(names) if seed % 4 != 2 else None,
                                   filename_pattern=pattern)
            _check_annotations(ann)
        failures.append(_run("csv", seed, mutation, read))
    _report(failures)


def test_fuzz_ssv2_json_and_labels(tmp_path):
    failures = []
    path, labels = tmp_path / "something-something-v2-train.json", tmp_path / "labels.json"
    for seed in range(CASES):
        rng = random.Random(seed)
        target = rng.choice(["entries", "entries", "labels"])
        if target == "entries":
            data, mutation = _mutate_json(rng, SSV2_ENTRIES)
            path.write_bytes(data)
            labels.write_text(json.dumps(SSV2_LABELS))
        else:
            data, mutation = _mutate_json(rng, SSV2_LABELS)
            labels.write_bytes(data)
            path.write_text(json.dumps(SSV2_ENTRIES))

        def read():
            _check_annotations(read_annotations(str(path), root="20bn"))
        failures.append(_run(f"ssv2 {target}", seed, mutation, read))
    _report(failures)


def _check_config(cfg) -> None:
    """A config that loads must be usable: finite numbers, and saved then reloaded it is the same config."""
    for section in (cfg.model, cfg.data, cfg.train, cfg.eval):
        for value in vars(section).values():
            if isinstance(value, float):
                assert math.isfinite(value)
    assert config_from_dict(yaml.safe_load(cfg.to_yaml()), complete=True) == cfg


def test_fuzz_yaml_config(tmp_path):
    failures = []
    path = tmp_path / "run.yaml"
    base = yaml.safe_load(CONFIG_YAML)
    for seed in range(CASES):
        rng = random.Random(seed)
        if rng.random() < 0.5:
            mutated, mutation = _type_mutation(rng, base)
            try:
                data = yaml.safe_dump(mutated, allow_unicode=True).encode()
            except yaml.YAMLError:
                continue
        else:
            data, mutation = _mutate_text(rng, CONFIG_YAML)
        path.write_bytes(data)
        failures.append(_run("yaml", seed, mutation, lambda: _check_config(load_config(path))))
    _report(failures)


def test_fuzz_set_overrides_and_saved_configs():
    """`--set KEY=VALUE` strings and saved (checkpoint) config dicts with random keys and values."""
    failures = []
    base = load_config("tiny").to_dict()
    keys = [f"{s}.{k}" for s in ("model", "data", "train", "eval") for k in base[s]] + ["name", "output", "device"]
    for seed in range(CASES):
        rng = random.Random(seed)
        value = rng.choice(ODD_TEXT + [str(v) for v in ODD_VALUES] + ["1", "8", "0.5", "true", "a,b,a"])
        assignment = f"{rng.choice(keys)}={value}"
        if rng.random() < 0.2:
            assignment = _mutate_text(rng, assignment)[0].decode("utf-8", "replace")
        failures.append(_run("--set", seed, assignment, lambda: _check_config(load_config("tiny", [assignment]))))
        saved, mutation = _type_mutation(rng, base)
        failures.append(_run("saved config", seed, mutation,
                             lambda: _check_config(config_from_dict(saved, complete=True))))
    _report(failures)


def test_fuzz_model_geometry_builds_whenever_it_validates():
    """Random model sections of a tiny model: a config that validates must build and run a forward pass in
    eval and train mode; one that cannot must be refused by validation, not by torch. (150 cases: each
    that validates builds and runs a model.)"""
    import torch

    from ila.models.ila import ILAModel

    choices = {"temporal": ["ila", "mean", "attention", "joint"], "head": ["text", "classifier"],
               "interactive_block": ["separable", "dense"], "mi_token": ["release", "paper"],
               "image_resolution": [0, 8, 16, 28, 32, 33, 48], "vision_patch_size": [0, 1, 4, 7, 8, 16, 32],
               "vision_width": [0, 32, 64, 96, 128], "embed_dim": [32, 64, 128], "transformer_width": [32, 64, 100],
               "vision_layers": [0, 1, 2], "transformer_layers": [0, 1], "context_length": [0, 1, 2, 5],
               "num_frames": [0, 1, 2, 3, 5], "align_hidden": [0, 1, 2, 3, 8], "point_hidden": [2, 4, 6, 8],
               "num_classes": [0, 1, 3], "mit_layers": [0, 1, 2], "prompts_layers": [0, 1],
               "mit_pos_embed": [True, False], "quick_gelu": [True, False], "drop_path": [0.0, 0.5, 1.0]}
    outcomes = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                           # tiny models: threads cost more than they give
    for seed in range(CASES // 2):
        rng = random.Random(seed)
        picked = {k: rng.choice(v) for k, v in rng.sample(sorted(choices.items()), rng.randint(1, 8))}
        sets = [f"model.{k}={v}" for k, v in picked.items()]
        sets = [s.replace("model.num_frames", "data.num_frames").replace("model.image_resolution", "data.input_size")
                for s in sets]

        def build():
            cfg = load_config("tiny", sets).model
            model = ILAModel(cfg)
            video = torch.randn(2, cfg.num_frames, 3, cfg.image_resolution, cfg.image_resolution)
            text = torch.randn(3, cfg.embed_dim) if cfg.head == "text" else None
            with torch.no_grad():
                for mode in (False, True):
                    logits = model.train(mode)(video, text_features=text).logits
                    assert logits.shape == (2, 3 if cfg.head == "text" else cfg.num_classes)
                    assert torch.isfinite(logits).all()
        outcomes.append(_run("model", seed, " ".join(sets), build))
    torch.set_num_threads(threads)
    _report(outcomes)


# ----------------------------------------------------------------------------------------------- weight files
# Seeded mutations of pickles (bytes, opcodes, memo references, nesting, shared structures), fed to ila's
# restricted unpickler (`ila.safe_load.load`) and to `ila.read_weights`; and of shared model folders (config.json
# values and structure, the safetensors header's 8-byte length and JSON) fed to `ila.from_pretrained`. Every case
# must end, within CASE_SECONDS (measured), in a well-formed result or a one-line UserError.

CASE_SECONDS = 2.0


def _timed(kind: str, seed: int, mutation: str, fn) -> str:
    start = time.perf_counter()
    outcome = _run(kind, seed, mutation, fn)
    elapsed = time.perf_counter() - start
    if elapsed > CASE_SECONDS:
        return f"{kind} seed {seed} ({mutation[:120]}): took {elapsed:.2f} s (bound {CASE_SECONDS} s)"
    return outcome


def _pickle_ops(data: bytes) -> list[tuple[int, int, object]]:
    """(start, end, opcode) of each opcode of the pickle `data` (a valid one)."""
    ops = list(pickletools.genops(data))
    starts = [pos for _, _, pos in ops] + [len(data)]
    return [(starts[i], starts[i + 1], op) for i, (op, _, _) in enumerate(ops)]


def _get(i: int) -> bytes:
    return b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)


def _put(i: int) -> bytes:
    return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)


PICKLE_SNIPPETS = [b"0", b"2", b"(", b"1", b"]", b"}", b")", b"t", b"l", b"d", b"a", b"e", b"s", b"u", b"R", b"b",
                   b"\x81", b"\x85", b"\x86", b"\x87", b"N", b"\x88", b"K\x07", b"J\xff\xff\xff\x7f", b".",
                   b"\x8a\x09" + b"\xff" * 9, b"X\x05\x00\x00\x00hello", b"X\xff\xff\xff\x7f", b"T\xff\xff\xff\x7f",
                   b"\x8b\xff\xff\xff\x7f", b"ctorch\nFloatStorage\n", b"c__builtin__\nset\n", b"ctorch\nSize\n",
                   b"ccollections\nOrderedDict\n", b"cos\nsystem\n", b"c__builtin__\neval\n", b"Q", b"P0\n",
                   b"ctorch._utils\n_rebuild_tensor_v2\n", b"\x80\x05", b"\x95\xff\xff\xff\xff\x00\x00\x00\x00",
                   b"g99999\n", b"p0\n", b"I" + b"9" * 5000 + b"\n", b"L" + b"9" * 5000 + b"L\n", b"F1e999\n"]


def _memo_indices(ops) -> list[int]:
    return sorted({arg for _, _, op, arg in ops if op.name in ("BINPUT", "LONG_BINPUT")}) or [0]


def _pickle_mutation(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """One mutation of a valid pickle: bytes, opcodes, memo references, nesting or shared structures."""
    ops = [(s, e, op, arg) for (s, e, op), (_, arg, _) in zip(_pickle_ops(data), pickletools.genops(data))]
    kind = rng.choice(["flip", "flip", "set_byte", "insert_bytes", "delete_bytes", "truncate", "delete_op",
                       "duplicate_op", "swap_ops", "insert_op", "insert_op", "memo_ref", "memo_fanout", "memo_dag",
                       "nest", "repeat_ops", "string_byte"])
    n = len(data)
    start, end, op, arg = rng.choice(ops[1:-1] or ops)
    if kind == "flip":
        i = rng.randrange(n)
        return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1:], f"flip byte {i}"
    if kind == "set_byte":
        i = rng.randrange(n)
        return data[:i] + bytes([rng.randrange(256)]) + data[i + 1:], f"set byte {i}"
    if kind == "insert_bytes":
        i = rng.randint(0, n)
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 8))) + data[i:], f"insert at {i}"
    if kind == "delete_bytes":
        i = rng.randrange(n)
        return data[:i] + data[i + rng.randint(1, 20):], f"delete at {i}"
    if kind == "truncate":
        i = rng.randrange(n)
        return data[:i], f"truncate at {i}"
    if kind == "delete_op":
        return data[:start] + data[end:], f"delete {op.name} at {start}"
    if kind == "duplicate_op":
        return data[:end] + data[start:end] + data[end:], f"duplicate {op.name} at {start}"
    if kind == "swap_ops":
        s2, e2, op2, _ = ops[min(ops.index((start, end, op, arg)) + 1, len(ops) - 1)]
        return data[:start] + data[s2:e2] + data[start:end] + data[e2:], f"swap {op.name} and {op2.name}"
    if kind == "insert_op":
        snippet = rng.choice(PICKLE_SNIPPETS)
        return data[:start] + snippet + data[start:], f"insert {snippet[:12]!r} before {op.name} at {start}"
    if kind == "string_byte":        # a byte inside a string or a number: the pickle stays well-formed
        texts = [(s, e) for s, e, o, _ in ops if o.name in ("BINUNICODE", "SHORT_BINSTRING", "BININT1", "BININT",
                                                             "BINFLOAT")]
        s, e = rng.choice(texts)
        i = rng.randrange(s + 1, e) if e - s > 1 else s
        return data[:i] + bytes([rng.choice(b"abcxyz019._")]) + data[i + 1:], f"change byte {i} of a value"
    memo = _memo_indices(ops)
    puts = [(s, e, a) for s, e, o, a in ops if o.name in ("BINPUT", "LONG_BINPUT")]
    if kind == "memo_ref":           # a memo fetch or store names another entry (or one that does not exist)
        refs = [(s, e, o) for s, e, o, _ in ops if o.name in ("BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT")]
        s, e, o = rng.choice(refs)
        index = rng.choice(memo + [max(memo) + 1, 255, 2 ** 31])
        code = (_get if "GET" in o.name else _put)(index)
        return data[:s] + code + data[e:], f"{o.name} -> {index} at {s}"
    s, e, index = rng.choice(puts)
    if kind == "memo_fanout":        # a value memoized there is replaced by a list of k fetches of it
        k = rng.choice([2, 10, 100, 1000])
        return data[:e] + b"0(" + _get(index) * k + b"l" + data[e:], f"list of {k} fetches of memo {index}"
    if kind == "memo_dag":           # ... by a DAG of `levels` levels, each holding the last twice
        levels, base, as_tuple = rng.choice([3, 10, 17, 30, 80]), max(memo) + 1, rng.random() < 0.5
        chain = b"0" + _get(index) + _put(base) + b"0"
        for j in range(1, levels):
            twice = _get(base + j - 1) * 2
            chain += (twice + b"\x86" if as_tuple else b"(" + twice + b"l") + _put(base + j) + b"0"
        chain += _get(base + levels - 1)
        shape = "tuple" if as_tuple else "list"
        return data[:e] + chain + data[e:], f"{shape} DAG of {levels} levels over memo {index}"
    if kind == "nest":               # the value memoized there wrapped in k one-item tuples
        k = rng.choice([1, 5, 50, 99, 100, 101, 150, 5000])
        return data[:e] + b"\x85" * k + data[e:], f"memo {index} nested in {k} tuples"
    # repeat_ops: a run of opcodes repeated several times
    i = ops.index((start, end, op, arg))
    j = min(len(ops) - 1, i + rng.randint(1, 6))
    segment = data[start:ops[j][0]]
    times = rng.choice([2, 3, 50])
    return data[:start] + segment * times + data[start:], f"{times} x ops {i}..{j}"


def _mutate_pickle(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    names = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        try:
            mutated, name = _pickle_mutation(rng, data)
        except Exception:  # noqa: BLE001 - a previous mutation made it unparsable: mutate bytes only
            i = rng.randrange(len(data) or 1)
            mutated, name = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:], f"set byte {i}"
        data = mutated
        names.append(name)
    return data, " + ".join(names)


def _zip_records(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i) for i in z.infolist()}


def _write_zip(path, records: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in records.items():
            z.writestr(name, data)


def _legacy_parts(data: bytes) -> list[bytes]:
    """A legacy torch.save file as its five pickles (magic, protocol, system info, data, storage keys) and the raw
    storages after them."""
    parts, f = [], io.BytesIO(data)
    for _ in range(5):
        start = f.tell()
        for _op in pickletools.genops(f):
            pass
        parts.append(data[start:f.tell()])
    return parts + [data[f.tell():]]


def _fuzz_container():
    """A state dict and its surroundings as an authors' container has them: tensors (one a view of another's
    storage, half and integer ones), module metadata, nested config, shared references, sets, sizes, dtypes."""
    import collections

    import torch

    torch.manual_seed(0)
    w = torch.randn(4, 3)
    model = collections.OrderedDict([("0.weight", w), ("0.bias", torch.randn(4)), ("view", w[1:, ::2]),
                                     ("half", torch.randn(2, 2).half()), ("steps", torch.arange(5))])
    model._metadata = collections.OrderedDict([("", {"version": 1}), ("0", {"version": 2})])
    shared = ["abseiling", "air drumming"]
    return {"model": model, "config": {"MODEL": {"ARCH": "ViT-B/32", "FRAMES": 8, "DROP": 0.1},
                                       "lr": 1e-3, "flags": [True, False, None], "big": 2 ** 70, "t": (1, "a", 2.5)},
            "names": shared, "again": shared, "set": {1, 2, "z"}, "frozen": frozenset({3}),
            "size": torch.Size([2, 3]), "keys": {(1, "a"): 1, 7: "seven"}, "epoch": 3, "dtype": torch.float16,
            "complex": complex(1, 2)}


def _check_loaded(value, limit: int) -> None:
    """What a successful read must be: inert values of the kinds a weight file holds, nesting at most 100 deep,
    unfolding (shared parts counted each time) to at most `limit` items, every tensor readable."""
    import collections

    import numpy as np
    import torch

    from ila import safe_load

    named = set(map(id, safe_load._GLOBALS.values()))
    stack, visits = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        visits += 1
        assert visits <= limit and depth <= 101, (visits, depth)
        if isinstance(item, dict):
            for key in item:
                assert isinstance(key, (str, int, float, bool, type(None), bytes, torch.dtype)) or (
                    type(key) is tuple and all(isinstance(k, (str, int, float, bool, type(None), bytes)) for k in key)
                ), type(key)
            stack.extend((v, depth + 1) for v in [*item.keys(), *item.values()])
            if type(item) is collections.OrderedDict:
                stack.extend((v, depth + 1) for v in vars(item).values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, safe_load.ScriptObject):
            stack.extend((v, depth + 1) for v in vars(item).values())
        elif torch.is_tensor(item):
            assert item.numel() < 1 << 24
            item.float().sum()                            # every element lies inside its storage
        else:
            assert isinstance(item, (str, bytes, int, float, bool, type(None), complex, slice, torch.dtype,
                                     np.generic, np.dtype, safe_load._StorageType, safe_load._Storage,
                                     safe_load._TensorType)) or id(item) in named or (
                isinstance(item, type) and issubclass(item, safe_load.ScriptObject)), type(item)


def _same_content(a, b) -> bool:
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape \
            and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_content(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same_content(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


PICKLE_CASES = 320


def test_fuzz_pickles_read_by_safe_load(tmp_path):
    """Mutated `torch.save` pickles, as zip archives (240 cases) and legacy files (80), read by ila's unpickler."""
    import torch

    from ila import safe_load

    base = tmp_path / "base.pt"
    torch.save(_fuzz_container(), base)
    records = _zip_records(base)
    pkl_name = next(n for n in records if n.endswith("data.pkl"))
    legacy = tmp_path / "base-legacy.pt"
    torch.save(_fuzz_container(), legacy, _use_new_zipfile_serialization=False)
    parts = _legacy_parts(legacy.read_bytes())
    expected = {"zip": safe_load.load(base), "legacy": safe_load.load(legacy)}
    outcomes, same = [], 0
    for seed in range(PICKLE_CASES):
        rng = random.Random(seed)
        form = "legacy" if seed % 4 == 3 else "zip"
        path = tmp_path / f"case-{form}.pt"
        if form == "zip":
            data, mutation = _mutate_pickle(rng, records[pkl_name])
            _write_zip(path, {**records, pkl_name: data})
        else:
            data, mutation = _mutate_pickle(rng, parts[3])
            path.write_bytes(b"".join(parts[:3]) + data + b"".join(parts[4:]))
        limit = safe_load._WEIGHT_FLOOR + safe_load._WEIGHT_PER_BYTE * path.stat().st_size

        def read():
            nonlocal same
            content = safe_load.load(path)
            if _same_content(content, expected[form]):
                same += 1
            else:
                _check_loaded(content, limit)
        outcomes.append(_timed(f"pickle/{form}", seed, mutation, read))
    _report(outcomes)
    assert same < outcomes.count("ok")           # some mutations read as other, still well-formed, values


def test_fuzz_pickles_read_as_weights(tmp_path):
    """Mutated pickles of an ila checkpoint, read by `ila.read_weights` (every reader's probe, then its checks)."""
    import torch

    import ila
    from ila.config import load_config
    from ila.weights.checkpoint import FORMAT

    cfg = load_config("tiny")
    torch.manual_seed(0)
    state = {"format": FORMAT, "config": cfg.to_dict(), "class_names": [f"c{i}" for i in range(8)],
             "model": ila.build_model(cfg.model).state_dict(), "train_state": None}
    base = tmp_path / "base.pt"
    torch.save(state, base)
    records = _zip_records(base)
    pkl_name = next(n for n in records if n.endswith("data.pkl"))
    expected = ila.read_weights(base)
    outcomes = []
    for seed in range(PICKLE_CASES // 2):
        rng = random.Random(1000 + seed)
        data, mutation = _mutate_pickle(rng, records[pkl_name])
        path = tmp_path / "case.pt"
        _write_zip(path, {**records, pkl_name: data})

        def read():
            record = ila.read_weights(path)
            assert isinstance(record.state_dict, dict) and record.state_dict
            assert all(isinstance(k, str) and torch.is_tensor(v) for k, v in record.state_dict.items())
            assert isinstance(record.class_names, list) and all(isinstance(c, str) for c in record.class_names)
            if list(record.state_dict) == list(expected.state_dict):
                assert all(v.shape == expected.state_dict[k].shape for k, v in record.state_dict.items())
        outcomes.append(_timed("read_weights", seed, mutation, read))
    _report(outcomes)


def _pretrained_base(root):
    """A shared model folder of the tiny preset, and the same as one `.safetensors` file with its config in the
    metadata."""
    import torch
    from safetensors.torch import save_file

    import ila
    from ila.config import load_config

    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = ila.build_model(cfg.model)
    folder = root / "base"
    ila.save_pretrained(model, folder, class_names=[f"c{i}" for i in range(8)], config=cfg)
    single = root / "single.safetensors"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(single), metadata={"format": "pt", "ila_format": "ila-pretrained/1",
                                              "ila_config": (folder / "config.json").read_text()})
    return folder, single


def _check_model(model, expected) -> None:
    import torch

    state = model.state_dict()
    assert isinstance(model, torch.nn.Module) and list(state) == list(expected)
    assert all(state[k].shape == expected[k].shape and state[k].dtype == expected[k].dtype for k in state)
    assert isinstance(model.class_names, list) and all(isinstance(c, str) for c in model.class_names)


JSON_SNIPPETS = ["[" * 70 + "]" * 70, "[" * 5000, "9" * 5000, "-" + "9" * 40, "1e999", "-1e999", "1" * 31, "NaN",
                 "Infinity", '"\\ud800"', "{}", "[]", "null", '{"a": ' * 70 + "1" + "}" * 70]


def _mutate_config_json(rng: random.Random, text: str) -> tuple[bytes, str]:
    """config.json: one value replaced by another type, dropped or duplicated; the text mutated; or a JSON bomb put
    in place of a value."""
    choice = rng.random()
    if choice < 0.45:
        mutated, name = _type_mutation(rng, json.loads(text))
        return json.dumps(mutated).encode(), name
    if choice < 0.65:
        values = [m for m in re.finditer(r'(?<=: )(-?[\d.]+|true|false|"[^"]*")', text)]
        m = rng.choice(values)
        snippet = rng.choice(JSON_SNIPPETS)
        return (text[:m.start()] + snippet + text[m.end():]).encode(), f"value at {m.start()} -> {snippet[:20]}"
    return _mutate_text(rng, text)


def _mutate_safetensors(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    """A safetensors file: its 8-byte header length, its JSON header (values, structure, text) or its data."""
    n = struct.unpack("<Q", data[:8])[0]
    header, rest = data[8:8 + n], data[8 + n:]
    kind = rng.choice(["length", "length", "header_value", "header_value", "header_text", "header_bomb", "data"])
    if kind == "length":
        new = rng.choice([0, 1, n - 1, n + 1, n + 8, n // 2, len(data), len(data) - 8, 2 ** 32, 2 ** 63,
                          2 ** 64 - 1, 100_000_001, rng.randrange(2 ** 64)])
        return struct.pack("<Q", new) + data[8:], f"length: {n} -> {new}"
    if kind == "data":
        i = rng.randrange(len(rest))
        return data[:8 + n] + rest[:i] + bytes([rest[i] ^ 0xFF]) + rest[i + 1:], f"data: flip byte {i}"
    if kind == "header_bomb":        # a JSON bomb as a tensor's shape, its dtype, or a key of its own
        snippet = rng.choice(JSON_SNIPPETS)
        meta = json.loads(header)
        name = rng.choice(sorted(k for k in meta if k != "__metadata__"))
        where = rng.choice(["shape", "dtype", "data_offsets", "new key"])
        text = json.dumps(meta)
        if where == "new key":
            text = '{"bomb": ' + snippet + ", " + text[1:]
        else:
            text = text.replace(json.dumps(name) + ": {", json.dumps(name) + ': {"' + where + '": ' + snippet
                                + ", ", 1)
            text = text.replace(', "' + where + '": ' + json.dumps(meta[name][where]), "", 1)
        header = text.encode()
        return struct.pack("<Q", len(header)) + header + rest, f"header bomb: {snippet[:20]} as {name}.{where}"
    if kind == "header_value":
        meta = json.loads(header)
        name = rng.choice(sorted(meta))
        entry = meta[name]
        if name == "__metadata__":
            key = rng.choice(sorted(entry))
            entry[key] = rng.choice(["", "{}", "x", json.dumps({"ila_format": 1}), "[" * 100])
            what = f"header value: __metadata__.{key}"
        else:
            field = rng.choice(["dtype", "shape", "data_offsets"])
            entry[field] = rng.choice([
                "F16", "I64", "BOOL", "F64", "U8", "X", None, [], [0], [-1], [2 ** 40, 2 ** 40], [1, 2, 3],
                [entry["data_offsets"][0], entry["data_offsets"][1] + 4], [0, len(rest) + 1], [5, 3],
                list(reversed(entry.get("shape") or [1])), [n, n], [0.5, 1]])
            what = f"header value: {name}.{field} -> {entry[field]!r}"
        header = json.dumps(meta).encode()
        header += b" " * (-len(header) % 8)
        return struct.pack("<Q", len(header)) + header + rest, what
    mutated, name = _mutate_text(rng, header.decode("utf-8", "replace"))
    return struct.pack("<Q", len(mutated)) + mutated + rest, f"header text: {name}"


def test_fuzz_pretrained_folders_and_files(tmp_path):
    """A shared model folder with a mutated config.json (200 cases) or model.safetensors header (160), and the
    one-file form with a mutated header or config metadata (160), read by `ila.from_pretrained`."""
    import shutil

    import torch

    import ila

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder, single = _pretrained_base(tmp_path)
    expected = ila.from_pretrained(folder).state_dict()
    config_text = (folder / "config.json").read_text()
    weights = (folder / "model.safetensors").read_bytes()
    single_bytes = single.read_bytes()
    outcomes = []
    for seed in range(520):
        rng = random.Random(2000 + seed)
        case = tmp_path / "case"
        if seed < 360:
            shutil.rmtree(case, ignore_errors=True)
            case.mkdir()
            (case / "config.json").write_text(config_text)
            (case / "model.safetensors").write_bytes(weights)
            if seed < 200:
                data, mutation = _mutate_config_json(rng, config_text)
                (case / "config.json").write_bytes(data)
                kind = "config.json"
            else:
                data, mutation = _mutate_safetensors(rng, weights)
                (case / "model.safetensors").write_bytes(data)
                kind = "model.safetensors"
            source = case
        else:
            source = tmp_path / "case.safetensors"
            if seed % 2:
                data, mutation = _mutate_safetensors(rng, single_bytes)
            else:        # the config carried in the metadata
                n = struct.unpack("<Q", single_bytes[:8])[0]
                meta = json.loads(single_bytes[8:8 + n])
                text, mutation = _mutate_config_json(rng, meta["__metadata__"]["ila_config"])
                meta["__metadata__"]["ila_config"] = text.decode("utf-8", "replace")
                header = json.dumps(meta).encode()
                header += b" " * (-len(header) % 8)
                data = struct.pack("<Q", len(header)) + header + single_bytes[8 + n:]
            source.write_bytes(data)
            kind = "one .safetensors file"
        outcomes.append(_timed(kind, seed, mutation, lambda: _check_model(ila.from_pretrained(source), expected)))
    torch.set_num_threads(threads)
    _report(outcomes)
