"""ILA models: CLIP towers, alignment, IST blocks, baselines, heads, release checkpoints."""
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel, ILAOutput, build_model

__all__ = ["ILAModel", "ILAOutput", "ModelConfig", "build_model"]
