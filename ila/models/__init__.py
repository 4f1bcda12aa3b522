"""ILA models: CLIP towers, alignment, IST blocks, baselines, heads, release checkpoints."""
from ila.models.config import ModelConfig
from ila.models.ila import ILAModel, ILAOutput, build_model
from ila.models.registry import create_blocks, register_temporal, temporal_variants

__all__ = ["ILAModel", "ILAOutput", "ModelConfig", "build_model", "create_blocks", "register_temporal",
           "temporal_variants"]
