import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from parsenet.checkpoint import load_trained_model
from parsenet.data import build_dataset
from parsenet.trainer import evaluate

ROOT = Path(__file__).resolve().parents[1]
DATA = {"size": 32, "num_images": 5}  # odd: the two ranks get 3 and 2 validation images, no padding


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_torchrun_two_cpu_processes_match_a_single_process_evaluation(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "cli.train", "--dataset", "scenes", "--dataset-option", f"size={DATA['size']}",
           "--dataset-option", f"num_images={DATA['num_images']}", "--width", "0.0625", "--batch-norm",
           "--batch-size", "2", "--steps", "3", "--eval-every", "3", "--eval-batch-size", "2",
           "--scale-range", "1", "1", "--lr", "0.01", "--no-progress", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Only rank 0 wrote: one summary, one eval line, the checkpoints.
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "log.jsonl", "summary.json"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["last"]["step"] == 3
    evals = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines() if '"eval"' in x]
    assert len(evals) == 1

    model = load_trained_model(out / "last.pt").model
    val = build_dataset("scenes", "val", train=False, **DATA)
    single = evaluate(model, val, batch_size=2)
    assert single.pixels == 5 * 32 * 32
    assert summary["last"]["metrics"] == single.to_dict()  # confusion matrices summed over both ranks
