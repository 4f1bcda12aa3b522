"""ILA video recognition: the authors' model, exactly, with training, evaluation and prediction.

    model = ila.create_model("ila-b32-8f-k400", weights="ViT-B-32.pt")  # a preset on CLIP weights
    model = ila.create_model(weights="runs/demo")           # an ila run, a pretrained folder or Hub id, a release
    model = ila.load_release("k400_b32_8.pth")              # the authors' released weights
    model = ila.from_pretrained("ORG/NAME")                 # a shared folder, .safetensors file or Hub repo id
    out = model(video, ila.tokenize(class_names))           # .logits, .align_losses, .points
    model = ila.fuse(model)                                  # inference only: same outputs, less work
    model = ila.fuse(model, precision="bf16")                # or: the frame tower in bf16 (fp32 outputs)
    ila.save_pretrained(model, "my-ila")                     # config.json + model.safetensors + README.md
    classify = ila.pipeline("runs/demo")                     # classify("clip.mp4"): what `ila predict --json` prints
    views = ila.Processor.from_pretrained("runs/demo")("clip.mp4")  # the (views, T, 3, S, S) clips a model is fed
"""
from ila.hub import save_pretrained
from ila.models.clip import tokenize
from ila.models.config import ModelConfig
from ila.models.fuse import FUSIONS, PRECISIONS, fuse
from ila.models.ila import ILAModel, ILAOutput, build_model
from ila.pipeline import Pipeline, Processor, pipeline
from ila.presets import PRESETS, get_preset
from ila.version import __version__
from ila.weights import create_model, from_clip, from_pretrained, load_checkpoint, load_release, read_weights

__all__ = ["__version__", "FUSIONS", "ILAModel", "ILAOutput", "ModelConfig", "PRECISIONS", "PRESETS", "Pipeline",
           "Processor", "build_model",
           "create_model", "from_clip", "from_pretrained", "fuse", "get_preset", "load_checkpoint", "load_release",
           "pipeline", "read_weights", "save_pretrained", "tokenize"]
