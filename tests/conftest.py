import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("ERF_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set ERF_CAMVID or put ../shared/data/camvid beside the repo)")
    return CAMVID
