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
