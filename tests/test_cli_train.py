import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.train import eval_command, train_command
from conftest import assert_one_line_error
from parsenet.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "scenes", "--dataset-option", "size=32", "--dataset-option", "num_images=6",
        "--width", "0.0625", "--batch-norm", "--batch-size", "2", "--scale-range", "1", "1", "--lr", "0.01",
        "--eval-batch-size", "3", "--no-progress"]


def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def test_train_then_eval(tmp_path):
    out = tmp_path / "run"
    result = run(train_command, [*TINY, "--steps", 2, "--eval-every", 2, "--out", out])
    assert result.exit_code == 0, result.output
    assert "best mean IoU" in result.stdout and str(out) in result.stdout
    summary = json.loads((out / "summary.json").read_text())

    result = run(eval_command, [out / "last.pt", "--json"])  # dataset and options from the checkpoint
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mean_iou"] == summary["last"]["metrics"]["mean_iou"]
    assert report["per_class_iou"] == summary["last"]["metrics"]["per_class_iou"]
    assert len(report["classes"]) == 11 and report["split"] == "val"

    result = run(eval_command, [out / "best.pt", "--dataset", "scenes", "--dataset-option", "size=32",
                                "--dataset-option", "num_images=6", "--batch-size", 1])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["metric", "best.pt"] and lines[3].startswith("mean IoU")
    assert f"{100 * summary['best']['metrics']['mean_iou']:.1f}" in lines[3]


def test_options_merge_preset_then_toml_then_command_line(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('steps = 5\nlr = 0.02\neval_every = 1\n[model]\nwidth = 0.0625\n'
                    '[dataset_options]\nsize = 32\nnum_images = 4\n')
    out = tmp_path / "run"
    result = run(train_command, ["--preset", "demo", "--config", toml, "--steps", 1, "--batch-size", 2,
                                 "--eval-batch-size", 4, "--no-progress", "--out", out])
    assert result.exit_code == 0, result.output
    cfg = load_checkpoint(out / "last.pt")["train_config"]
    assert cfg["steps"] == 1  # command line beats TOML
    assert cfg["lr"] == 0.02 and cfg["model"]["width"] == 0.0625  # TOML beats preset
    assert cfg["model"]["batch_norm"] is True and cfg["weight_decay"] == 5e-4  # from the preset
    # dataset options merge key by key: TOML's size and count over the preset's object size
    assert cfg["dataset_options"] == {"size": 32, "num_images": 4, "object_size": [0.18, 0.30]}


def test_resume_needs_only_the_run_folder_and_refuses_another_model(tmp_path):
    out = tmp_path / "run"
    assert run(train_command, [*TINY, "--steps", 2, "--eval-every", 2, "--out", out]).exit_code == 0
    result = run(train_command, ["--resume", "--out", out, "--no-progress"])  # already finished: nothing to do
    assert result.exit_code == 0, result.output
    result = run(train_command, ["--resume", "--out", out, "--context", "none"])
    assert_one_line_error(result, "another model config", "context: 'global' in the checkpoint, 'none' now")


@pytest.mark.slow
def test_killed_run_resumes_to_identical_weights(tmp_path):
    args = [*TINY, "--steps", 16, "--eval-every", 4]
    full = tmp_path / "full"
    assert run(train_command, [*args, "--out", full]).exit_code == 0

    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.train", *map(str, args), "--out", str(cut)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (cut / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(cut / "last.pt")["step"]
    assert killed_at < 16, "the run finished before it could be killed"

    result = run(train_command, ["--resume", "--out", cut, "--no-progress"])
    assert result.exit_code == 0, result.output
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(cut / "last.pt")
    assert a["step"] == b["step"] == 16
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["metrics"] == b["metrics"]


# --- bad input: one line, non-zero exit -----------------------------------------------------------------------------

def _folder(root: Path, *, mask_value: int = 1, mask_size=(32, 32), val_images: int = 2) -> Path:
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("ground\nthing\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", 2), ("val", val_images)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / "images" / f"{i}.png")
            mask = np.zeros(mask_size, np.uint8)
            mask[8:16, 8:16] = mask_value
            Image.fromarray(mask, mode="L").save(root / split / "masks" / f"{i}.png")
    return root


def _train_on(root: Path, tmp_path: Path):
    return run(train_command, ["--dataset", f"folder:{root}", "--width", "0.0625", "--batch-size", 2, "--steps", 1,
                               "--eval-every", 1, "--scale-range", 1, 1, "--no-progress", "--out", tmp_path / "run"])


def test_missing_data_folder(tmp_path):
    result = _train_on(tmp_path / "nowhere", tmp_path)
    assert_one_line_error(result, str(tmp_path / "nowhere"), "expected")


def test_mask_value_outside_the_classes(tmp_path):
    result = _train_on(_folder(tmp_path / "data", mask_value=7), tmp_path)
    assert_one_line_error(result, ".png", "7")


def test_mask_size_differs_from_image(tmp_path):
    result = _train_on(_folder(tmp_path / "data", mask_size=(30, 32)), tmp_path)
    assert_one_line_error(result, ".png", "32x30")


def test_empty_split(tmp_path):
    result = _train_on(_folder(tmp_path / "data", val_images=0), tmp_path)
    assert_one_line_error(result, "empty")


def test_corrupt_checkpoint(tmp_path):
    assert run(train_command, [*TINY, "--steps", 1, "--eval-every", 1, "--out", tmp_path / "run"]).exit_code == 0
    data = (tmp_path / "run" / "last.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    assert_one_line_error(run(eval_command, [tmp_path / "cut.pt"]), "cut.pt", "truncated or corrupt")


def test_missing_checkpoint(tmp_path):
    assert_one_line_error(run(eval_command, [tmp_path / "none.pt"]), "none.pt", "does not exist")


def test_disk_full_while_saving(tmp_path, monkeypatch):
    real_save = torch.save

    def fill_disk(obj, f, *a, **kw):
        if obj["step"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fill_disk)
    result = run(train_command, [*TINY, "--steps", 2, "--eval-every", 1, "--out", tmp_path / "run"])
    assert_one_line_error(result, "disk full", "previous files are intact")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 1


def test_existing_run_folder(tmp_path):
    assert run(train_command, [*TINY, "--steps", 1, "--eval-every", 1, "--out", tmp_path / "run"]).exit_code == 0
    result = run(train_command, [*TINY, "--steps", 1, "--out", tmp_path / "run"])
    assert_one_line_error(result, "already holds a run", "--resume")


def test_unknown_preset(tmp_path):
    assert_one_line_error(run(train_command, ["--preset", "dmeo", "--out", tmp_path]), "did you mean: demo")


def test_unknown_toml_key(tmp_path):
    (tmp_path / "c.toml").write_text("stesp = 3\n")
    assert_one_line_error(run(train_command, ["--config", tmp_path / "c.toml", "--out", tmp_path / "r"]),
                          "unknown training option 'stesp'", "did you mean: steps")


def test_invalid_toml(tmp_path):
    (tmp_path / "c.toml").write_text("steps = = 3\n")
    assert_one_line_error(run(train_command, ["--config", tmp_path / "c.toml"]), "is not valid TOML")


def test_bad_dataset_option():
    result = run(train_command, ["--dataset-option", "size"])
    assert result.exit_code != 0 and "'size' is not KEY=VALUE" in result.output


def test_resume_needs_out():
    result = run(train_command, ["--resume"])
    assert result.exit_code != 0 and "--resume needs --out DIR" in result.output


def test_bad_crop_size():
    result = run(train_command, ["--crop-size", "big"])
    assert result.exit_code != 0 and "'big' is not a positive integer or 'none'" in result.output
