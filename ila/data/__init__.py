"""Video data: from an annotation line to a normalised clip tensor.

annotations  Kinetics lists and CSV, SSv2 JSON, frame folders, class-name files -> `Sample`s
decode       PyAV decoding that seeks and decodes only what is needed; frame folders
sampling     segment / dense frame indices, deterministic test views, per-item random generators
transforms   clip-consistent torchvision v2 recipes (train, test), mixup / cutmix soft targets
dataset      `VideoDataset` (bad-file policy, per-epoch seeding) and `build_loader`
synthetic    the generated motion dataset of `ila make-dataset`

Nothing here imports from `ila.models` or `ila.engine`.
"""
