import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
FIXTURES = os.environ.get("ILA_PARITY_FIXTURES", os.path.join(SHARED, "fixtures", "official"))


@pytest.fixture
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        pytest.skip(f"no parity fixtures at {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def motion(tmp_path_factory):
    """A small generated motion set shared by the engine and CLI tests: 8 training and 5 validation videos
    (5: not divisible by 2 processes, on purpose), 8 frames at 32 px."""
    from ila.data.synthetic import make_dataset

    root = tmp_path_factory.mktemp("motion")
    make_dataset(str(root), num_train=8, num_val=5, size=32, frames=8, seed=0, verbose=False)
    return root
