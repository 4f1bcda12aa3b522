"""Weights in: every source of weights read by one registered reader into one record, and one factory that
builds a model from a config and a record (`ila.weights.factory.create_model`)."""
from ila.weights.factory import (
                                 check_model_fits,
                                 create_model,
                                 from_clip,
                                 from_pretrained,
                                 load_checkpoint,
                                 load_model,
                                 load_record,
                                 load_release,
)
from ila.weights.sources import SOURCES, WeightsRecord, read_weights, register_reader, weights_sha256

__all__ = ["SOURCES", "WeightsRecord", "check_model_fits", "create_model", "from_clip", "from_pretrained",
           "load_checkpoint", "load_model", "load_record", "load_release", "read_weights", "register_reader",
           "weights_sha256"]
