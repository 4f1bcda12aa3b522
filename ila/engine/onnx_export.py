"""`ila export --format onnx|exported`: a checkpoint as a deployable graph, checked against PyTorch.

The graph maps a normalised float clip `(B, T, 3, S, S)` (batch dynamic; frames sampled and cropped as
`ila predict` does, pixels on the 0-255 scale normalised with CLIP's mean and std) to `logits (B, K)` and
`probs (B, K)` (softmax). For a text head the class names' text features are computed once and baked in as a
constant. The preprocessing and the class names travel with the file: as ONNX metadata (key `ila`, JSON) and in
a side file `OUT.json`.

    onnx:     torch.onnx.export (the torch.export-based exporter); needs the `export` extra
              (`pip install -e '.[export]'` in the checkout, or `bash scripts/setup.sh export`)
              (onnx, onnxscript; onnxruntime for the parity check)
    exported: torch.export.export -> torch.export.save (`.pt2`), loaded with torch.export.load(...).module()

The model is fused for inference first (`ila.fuse`; the oneDNN kernels step aside while exporting). After
writing, the file is run on a random clip and compared with the eager model (onnxruntime / the loaded
ExportedProgram): the largest difference relative to the largest logit must be below 1e-4 (`TOLERANCE`).

Precision (`--precision`): `exported` takes bf16 (the model fused with `ila.fuse(precision="bf16")`, its frame
tower in bfloat16; checked against the same bf16 eager model within 2e-2: the graph's plain kernels round in
another order than eager's fused oneDNN ones). ONNX is fp32 only: onnxruntime's CPU kernels take no bfloat16
(its Conv refuses a bf16 input, onnxruntime 1.32), so a bf16 ONNX file would not run there; it is refused in one
line before anything is built.
"""
from __future__ import annotations

import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ila.atomic import atomic_path, output_file
from ila.data.preprocessing import Preprocessing
from ila.engine.session import InferenceSession
from ila.errors import UserError
from ila.models.fuse import parse_precision

TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2}    # the graph against the eager model of the same precision


class Deployable(nn.Module):
    """A model as a function of one tensor: clip `(B, T, 3, S, S)` -> (logits `(B, K)`, probs `(B, K)`).
    `text_features` `(K, E)`: the class names' text features of a text head (None for a classifier head)."""

    def __init__(self, model: nn.Module, text_features: torch.Tensor | None):
        super().__init__()
        self.model = model
        self.register_buffer("text_features", text_features)

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(video, text_features=self.text_features).logits
        return logits, logits.softmax(dim=-1)


def deployable(checkpoint, classes=None, overrides=(), precision: str = "fp32") -> tuple[Deployable, dict]:
    """The fused model of a checkpoint (through the inference session, on the CPU) wrapped as a `Deployable`, and
    its metadata: the preprocessing record (`ila.data.preprocessing`, as in checkpoints and pretrained folders),
    the head and the class names."""
    session = InferenceSession(checkpoint, classes, overrides, device="cpu", precision=precision)
    model, names = session.model, session.class_names
    meta = {"format": "ila-deployable/1", "input": "video", "outputs": ["logits", "probs"],
            "layout": "B,T,3,H,W float32, RGB on the 0-255 scale, (x - mean) / std per channel",
            "resize": "short side to input_size, centre crop input_size x input_size",
            "preprocessing": Preprocessing.of(session.cfg).to_dict(), "head": model.cfg.head, "class_names": names,
            "precision": session.precision}
    return Deployable(model, session.text.features).eval(), meta


def _check_shape(meta: dict, frames: int | None, size: int | None) -> tuple[int, int]:
    pre = meta["preprocessing"]
    built_frames, built_size = pre["num_frames"], pre["input_size"]
    for flag, value, built in (("--frames", frames, built_frames), ("--size", size, built_size)):
        if value is not None and value != built:
            raise UserError(f"{flag} {value}: this checkpoint's model is built for {built_frames} frames of "
                            f"{built_size}x{built_size} pixels (its positional embeddings fix both); "
                            f"drop {flag} or give {built}")
    return built_frames, built_size


def export(checkpoint, out, fmt: str = "onnx", frames: int | None = None, size: int | None = None,
           classes=None, overrides=(), check: bool = True, precision: str = "fp32") -> dict:
    """Write `out` (and `out`.json) from a checkpoint; returns the metadata with the parity check's error."""
    if fmt not in ("onnx", "exported"):
        raise UserError(f"--format {fmt!r}: this exporter writes onnx or exported")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as {out / ('model.' + _suffix(fmt))}")
    side = out.with_name(out.name + ".json")
    for path in (out, side):                   # a FIFO or a device node is refused before anything is built
        output_file(path, "--out")
    precision = parse_precision(precision)
    if fmt == "onnx" and precision != "fp32":
        raise UserError(f"--precision {precision}: onnxruntime's CPU kernels take no bfloat16 (its Conv refuses a bf16 "
                        f"input), so a bf16 ONNX file would not run there; export ONNX in fp32 (drop --precision) "
                        f"or use --format exported --precision {precision}")
    if fmt == "onnx":
        _need("onnx", "onnxscript")
    wrapper, meta = deployable(checkpoint, classes, overrides, precision)
    frames, size = _check_shape(meta, frames, size)
    example = torch.randn(2, frames, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1024)
    with torch.no_grad():
        expected = wrapper(example)[0]
    # the graph and its side file are both written in full before either replaces an old one: a full disk leaves
    # the previous pair as it was
    with atomic_path(out) as tmp, atomic_path(side) as tmp_side:
        if fmt == "onnx":
            _progress("tracing with torch.export and converting to ONNX (seconds for tiny models, minutes for ViT-B/L)")
            _write_onnx(wrapper, example, batch, tmp, meta)
        else:
            _progress("tracing with torch.export (seconds for tiny models, minutes for ViT-B/L)")
            program = torch.export.export(wrapper, (example,), dynamic_shapes={"video": {0: batch}})
            _progress(f"saving {out.name}")
            _write_exported(program, tmp)
        if check:
            _progress(f"checking {out.name} against the PyTorch model on a random clip "
                      f"({'onnxruntime' if fmt == 'onnx' else 'torch.export.load'})")
            got = _run_onnx(tmp, example) if fmt == "onnx" else torch.export.load(tmp).module()(example)[0]
            err = ((got - expected).abs().max() / expected.abs().max()).item()
            if not err < TOLERANCE[precision]:
                raise UserError(f"the exported graph differs from the model by {err:.1e} of the largest logit "
                                f"(more than {TOLERANCE[precision]:g}); nothing was written")
            meta["parity_error"] = err
        tmp_side.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _progress(message: str) -> None:
    """One line on stderr as each long step starts (`[export HH:MM:SS] ...`): a ViT-B export runs for minutes."""
    print(f"[export {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _write_exported(program, path: Path) -> None:
    """torch.export.save into memory, then written by Python: torch's own zip writer aborts the process (SIGABRT)
    when the disk fills up, while a Python write raises an OSError (one line, the previous file kept)."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.write_bytes(buffer.getbuffer())


def _suffix(fmt: str) -> str:
    return "onnx" if fmt == "onnx" else "pt2"


def _need(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {', '.join(missing)}: "
                        "pip install -e '.[export]' in the ila checkout")


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, batch, path: Path, meta: dict) -> None:
    import onnx

    program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=["video"],
                                output_names=["logits", "probs"], dynamic_shapes={"video": {0: batch}},
                                verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "ila", json.dumps(meta)
    onnx.save(model, str(path))


def _run_onnx(path: Path, video: torch.Tensor) -> torch.Tensor:
    try:
        import onnxruntime
    except ImportError:
        raise UserError("the ONNX parity check needs onnxruntime: pip install -e '.[export]' in the ila checkout "
                        "(or --no-check)") from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"video": video.numpy()})[0])
