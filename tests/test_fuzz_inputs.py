"""Fuzzing the readers of user files: seeded random mutations of a valid Kinetics list, Kinetics CSV, SSv2
JSON (with its labels file) and YAML config, each fed to the real reader. Every outcome must be a result
that holds up (labels in range, a config that validates and reloads) or a one-line `UserError`; any other
exception is a bug to fix where it is raised.

Each case is reproducible from its seed: the failure message names the seed and the mutation.
"""
from __future__ import annotations

import json
import math
import random

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
