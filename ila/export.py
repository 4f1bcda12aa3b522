"""`ila export`: the export formats, each registered once; the CLI's `--format` choices read this registry.

    hub        a shareable folder (config.json + model.safetensors + README.md), or one .safetensors file
    onnx       an ONNX graph clip -> (logits, probs), checked in onnxruntime (the export extra: pip install -e '.[export]')
    exported   a torch.export program (.pt2), checked against the eager model
"""
from __future__ import annotations

from pathlib import Path

from ila.engine import onnx_export
from ila.errors import UserError
from ila.hub import export_hub
from ila.registry import Registry

EXPORTERS = Registry("export format", key="--format")


def _hub(checkpoint, out, classes=None, precision="fp32", **_):
    if precision != "fp32":
        raise UserError(f"--precision {precision}: a hub export shares the trained float32 weights; the precision is "
                        f"chosen where they are run (ila predict/eval/features --precision, ila.fuse(model, "
                        f"precision=...))")
    export_hub(checkpoint, out, classes=classes)
    return None


def _graph(fmt: str):
    def export(checkpoint, out, classes=None, frames=None, size=None, overrides=(), check=True, precision="fp32"):
        return onnx_export.export(checkpoint, out, fmt, frames=frames, size=size, classes=classes,
                                  overrides=overrides, check=check, precision=precision)
    return export


EXPORTERS.register("hub", _hub, description="a shareable folder (or one .safetensors file) for the Hugging Face Hub")
EXPORTERS.register("onnx", _graph("onnx"), description="ONNX (onnxruntime, TensorRT, ...)", graph=True)
EXPORTERS.register("exported", _graph("exported"), description="torch.export (.pt2)", graph=True)


def export(checkpoint, out: str | Path, fmt: str, **options) -> dict | None:
    """Write `checkpoint` as `fmt` to `out`; the graph formats return their metadata (with the parity error)."""
    return EXPORTERS.get(fmt).obj(checkpoint, out, **options)
