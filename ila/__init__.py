"""ILA video recognition: the authors' model, exactly, with training, evaluation and prediction.

    model = ila.load_release("k400_b32_8.pth")              # the authors' released weights
    model = ila.from_pretrained("ORG/NAME")                 # a shared folder, .safetensors file or Hub repo id
    model = ila.from_clip("ViT-B-32.pt", ila.get_preset("ila-b32-8f-k400"))   # start from CLIP
    out = model(video, ila.tokenize(class_names))         # .logits, .align_losses, .points
    model = ila.fuse(model)                                  # inference only: same outputs, less work
"""
from ila.models.clip import tokenize
from ila.models.config import ModelConfig
from ila.models.fuse import FUSIONS, fuse
from ila.models.ila import ILAModel, ILAOutput, build_model, from_clip
from ila.hub import from_pretrained
from ila.models.release import load_release
from ila.presets import PRESETS, get_preset

__version__ = "0.1.0"


def load_checkpoint(path, overrides=(), device="cpu"):
    """An `ila` checkpoint -> (model, config, class_names); read safely (`ila.safe_load`: no code in the file
    runs), needs no other input."""
    from ila.engine.checkpoint import load_checkpoint as _load

    model, config, class_names, _ = _load(path, overrides, device)
    return model, config, class_names


__all__ = ["FUSIONS", "ILAModel", "ILAOutput", "ModelConfig", "PRESETS", "build_model", "from_clip", "from_pretrained",
           "fuse", "get_preset", "load_checkpoint", "load_release", "tokenize"]
