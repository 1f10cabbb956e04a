import os
from pathlib import Path

# One intra-op thread per test process (and per torchrun worker the tests launch): the suite's
# tensors are small, and the distributed tests run several processes on 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
CAMVID = Path(os.environ.get("ERF_CAMVID", ROOT.parent / "shared" / "data" / "camvid"))


def pytest_collection_modifyitems(config, items):
    """``cuda`` tests need a GPU: without one they are skipped, saying so (bench/gpu.sh runs them on a GPU)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False); "
                                   "run bash bench/gpu.sh on a machine with a GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID / "train").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID} (set ERF_CAMVID or put ../shared/data/camvid beside the repo)")
    return CAMVID


def assert_one_line_error(result, *fragments):
    """A click result that failed with exactly one line on stderr, holding every fragment, and no traceback."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
