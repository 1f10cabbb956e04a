"""Bad input through the commands: exit code, exactly one line on stderr, no traceback, and the output path as it
was found (issue 13). Tiny models and images keep each case well under a second."""
import hashlib
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.demo import main as demo_command
from cli.figures import main as figures_command
from cli.probe import probe_command
from cli.rf import main as rf_command
from cli.train import eval_command, train_command
from conftest import assert_one_line_error
from parsenet.checkpoint import save_checkpoint
from parsenet.config import ParseNetConfig
from parsenet.model import build_model

TINY_NETS = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU())

def other():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU())

def broken():
    raise RuntimeError("cannot build: missing config")
"""
SCENES = ["--dataset", "scenes", "--dataset-option", "size=32", "--dataset-option", "num_images=4"]


def run(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])


def snapshot(path: Path):
    """What a path holds: None if absent, else every file's relative name and content hash."""
    path = Path(path)
    if not path.exists():
        return None
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


def refused(command, args, out, *fragments, code=None):
    """Run a command that must fail: one line, no traceback, ``out`` as it was."""
    before = snapshot(out)
    result = run(command, args)
    assert_one_line_error(result, *fragments)
    if code is not None:
        assert result.exit_code == code
    assert snapshot(out) == before, f"{out} changed"
    return result


@pytest.fixture
def tmp(tmp_path, monkeypatch):
    (tmp_path / "badinput_nets.py").write_text(TINY_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing the nets leaves no __pycache__ in tmp
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(images / f"{name}.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def probe_args(tmp, out, *extra, model="badinput_nets:tiny", images=None):
    return [model, "--layer", "3", "--images", images or tmp / "images", "--patch", 5, "--stride", 3,
            "--top-k", 2, "--no-progress", "--out", out, *extra]


def tiny_checkpoint(path: Path, classes=None, *, nan=False, config=None) -> Path:
    from parsenet.data import build_dataset

    info = build_dataset("scenes", "val", size=32, num_images=4).info
    classes = list(info.classes) if classes is None else classes
    torch.manual_seed(0)
    model = build_model(ParseNetConfig(num_classes=len(classes), width=1 / 16, batch_norm=True))
    if nan:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    train_config = {"dataset": "scenes", "dataset_options": {"size": 32, "num_images": 4}, "seed": 0}
    save_checkpoint(path, model=model, step=1, classes=classes, mean=info.mean, std=info.std,
                    model_config=config, train_config=train_config)
    return path


def huge_png_header(path: Path, side: int = 30000) -> Path:
    """A PNG that declares side x side pixels (its data is a stub): enough for the pixel check, which must
    come before any decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def finished_probe(tmp, out, *extra):
    result = run(probe_command, probe_args(tmp, out, *extra))
    assert result.exit_code == 0, result.output
    return out


# --------------------------------------------------------------------------- issue 13: wrong answers, exit 0

@pytest.mark.parametrize("change, names", [
    (["--seed", 1], "seed: 0 there, 1 now"),
    (["--stride", 2], "stride: 3 there, 2 now"),
    (["--patch", 3, "--stride", 3], "patch: 5 there, 3 now"),
    (["--top-k", 3], "top_k: 2 there, 3 now"),
    (["--threshold", 0.3], "threshold: 0.5 there, 0.3 now"),
])
def test_resume_refuses_a_finished_result_made_with_other_settings(tmp, change, names):
    out = finished_probe(tmp, tmp / "out")
    changed = probe_args(tmp, out, "--resume") + [str(c) for c in change]  # the last --patch etc. wins in click
    refused(probe_command, changed, out, "cannot resume", names)


def test_resume_refuses_another_model(tmp):
    out = finished_probe(tmp, tmp / "out")
    refused(probe_command, probe_args(tmp, out, "--resume", model="badinput_nets:other"), out,
            "model weights (fingerprint)")


def test_resume_refuses_other_images(tmp):
    out = finished_probe(tmp, tmp / "out")
    other = tmp / "other"
    other.mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(other / f"{name}.png")
    refused(probe_command, probe_args(tmp, out, "--resume", images=other), out, "image set (fingerprint)")


def test_resume_keeps_a_matching_result_and_rebuilds_the_table_from_it(tmp):
    out = finished_probe(tmp, tmp / "out")
    table = json.loads((out / "table.json").read_text())
    result = run(probe_command, probe_args(tmp, out, "--resume"))
    assert result.exit_code == 0 and "kept" in result.stderr
    assert json.loads((out / "table.json").read_text()) == table
    assert table["model"] == "badinput_nets:tiny" and table["images"] == 3


def test_resume_refuses_a_result_without_provenance(tmp):
    out = finished_probe(tmp, tmp / "out")
    (out / "occlusion-3" / "provenance.json").unlink()
    refused(probe_command, probe_args(tmp, out, "--resume"), out, "has no provenance.json", "--overwrite")


def test_eval_refuses_nan_weights(tmp):
    ckpt = tiny_checkpoint(tmp / "nan.pt", nan=True)
    refused(eval_command, [ckpt], ckpt, "NaN or inf weights")


def test_probe_refuses_nan_weights(tmp):
    ckpt = tiny_checkpoint(tmp / "nan.pt", nan=True)
    refused(probe_command, [ckpt, "--layer", "fc7", *SCENES[:2], "--max-images", 1, "--out", tmp / "o"],
            tmp / "o", "NaN or inf weights")


def test_eval_refuses_other_class_names_unless_told(tmp):
    from parsenet.data import build_dataset

    n = len(build_dataset("scenes", "val", size=32, num_images=4).info.classes)
    ckpt = tiny_checkpoint(tmp / "other.pt", classes=[f"road{i}" for i in range(n)])
    refused(eval_command, [ckpt], ckpt, "names its classes differently", "road0", "--ignore-class-names")
    told = run(eval_command, [ckpt, "--ignore-class-names", "--batch-size", 4])
    assert told.exit_code == 0, told.output
    assert len(told.stderr.strip().splitlines()) == 1 and "road0" in told.stderr and "checkpoint:" in told.stderr


def test_16_bit_png_is_scaled_not_saturated(tmp):
    from erf.images import load_images

    ramp = (np.arange(24 * 24, dtype=np.uint32).reshape(24, 24) * 100).astype(np.uint16)  # 0 .. 57500
    folder = tmp / "deep"
    folder.mkdir()
    Image.fromarray(ramp).save(folder / "ramp.png")
    with pytest.warns(UserWarning, match="grayscale"):
        s = load_images(folder, mean=(0, 0, 0), std=(1, 1, 1))
    assert s.images[0, 0].numpy() == pytest.approx(ramp / 65535.0, abs=1e-6)
    assert float((s.images == 1.0).float().mean()) < 0.01


@pytest.mark.parametrize("command, args", [
    (probe_command, ["badinput_nets:tiny", "--layer", "3", "--images", "", "--out", "o"]),
    (probe_command, ["badinput_nets:tiny", "--layer", "3", "--images", "images", "--out", ""]),
    (train_command, ["--out", ""]),
    (figures_command, ["", "--out", "f"]),
    (demo_command, ["--quick", "--out", ""]),
])
def test_empty_string_is_not_a_path(tmp, command, args):
    refused(command, args, tmp, "empty string", code=2)


# --------------------------------------------------------------------------- issue 13: tracebacks

@pytest.mark.parametrize("device", ["gpu7", "cuda:99"] + ([] if torch.cuda.is_available() else ["cuda"]))
def test_one_device_check_for_every_command(tmp, device):
    ckpt = tiny_checkpoint(tmp / "m.pt")
    frag = "available here: cpu"
    refused(probe_command, probe_args(tmp, tmp / "p", "--device", device), tmp / "p", frag)
    refused(train_command, [*SCENES, "--device", device, "--out", tmp / "t"], tmp / "t", frag)
    refused(eval_command, [ckpt, "--device", device], ckpt, frag)


def test_image_over_the_pixel_limit(tmp):
    huge_png_header(tmp / "images" / "huge.png")
    out = tmp / "out"
    refused(probe_command, probe_args(tmp, out), out, "huge.png is 30000x30000", "--max-pixels")


def test_train_lr_inf(tmp):
    refused(train_command, [*SCENES, "--lr", "inf", "--out", tmp / "run"], tmp / "run", "lr = inf", "finite")


def test_demo_probe_images_0_before_training(tmp):
    refused(demo_command, ["--quick", "--probe-images", 0, "--out", tmp / "demo"], tmp / "demo", "--probe-images 0")


def test_builder_that_raises(tmp):
    refused(probe_command, probe_args(tmp, tmp / "o", model="badinput_nets:broken"), tmp / "o",
            "model builder 'badinput_nets:broken' raised RuntimeError: cannot build")


# --------------------------------------------------------------------------- issue 13: retries blocked

@pytest.mark.parametrize("extra, fragment", [
    (["--patch", 30, "--stride", 3], "larger than the 24x24 image"),
    (["--stride", 0], "stride=0"),
    (["--stride", -2], "stride=-2"),
    (["--stride", 6], "larger than the 5x5 patch"),
    (["--top-k", 0], "top_k=0"),
    (["--top-k", 4], "top_k=4 but there are 3 images"),
    (["--units", "0,9"], "units '0,9'"),
    (["--neuron", "9,0,0"], "outside layer"),
    (["--neuron", "0,50,50"], "outside layer"),
    (["--threshold", 1.5], "threshold=1.5"),
    (["--batch-size", 0], "batch_size=0"),
    (["--method", "gradient", "--noise-inputs", -1], "noise_inputs=-1"),
])
def test_options_checked_before_any_folder_is_created(tmp, extra, fragment):
    out = tmp / "out"
    args = probe_args(tmp, out)
    refused(probe_command, args[:-2] + [str(e) for e in extra] + args[-2:], out, fragment)
    fixed = run(probe_command, probe_args(tmp, out))  # the corrected command is not blocked
    assert fixed.exit_code == 0, fixed.output


# --------------------------------------------------------------------------- issue 13: unclear messages

def test_folder_given_as_checkpoint(tmp):
    (tmp / "run").mkdir()
    refused(probe_command, probe_args(tmp, tmp / "o", model=tmp / "run"), tmp / "o", "is a folder", "best.pt")


def test_wrong_type_in_checkpoint_config(tmp):
    ckpt = tiny_checkpoint(tmp / "m.pt")
    saved = torch.load(ckpt, weights_only=True)
    saved["model_config"]["width"] = "wide"
    torch.save(saved, ckpt)
    refused(eval_command, [ckpt], ckpt, "invalid model config", 'width = "wide"; expected a number')


def test_wrong_type_in_toml(tmp):
    (tmp / "config.toml").write_text('[model]\nwidth = "wide"\n')
    refused(train_command, ["--config", "config.toml", "--out", tmp / "r"], tmp / "r",
            'config.toml: [model] width = "wide"; expected a number')


def test_binary_toml(tmp):
    (tmp / "c.toml").write_bytes(b"\xff\xfe\x00binary\x80")
    refused(train_command, ["--config", tmp / "c.toml", "--out", tmp / "r"], tmp / "r", "c.toml", "not valid TOML")


def test_preset_dataset_options_do_not_follow_another_dataset(tmp):
    result = refused(train_command, ["--preset", "demo", "--dataset", f"folder:{tmp / 'nodata'}", "--out", tmp / "r"],
                     tmp / "r", "nodata")
    assert "'size'" not in result.stderr


@pytest.mark.parametrize("command", ["probe", "train"])
def test_out_pointing_at_a_file(tmp, command):
    (tmp / "file").write_text("x")
    args = probe_args(tmp, tmp / "file") if command == "probe" else [*SCENES, "--steps", 1, "--out", tmp / "file"]
    result = refused(probe_command if command == "probe" else train_command, args, tmp / "file", "file")
    assert "Errno" not in result.stderr


def test_click_usage_error_is_one_line(tmp):
    refused(probe_command, ["badinput_nets:tiny", "--layr", "3"], tmp, "No such option", code=2)
    refused(train_command, ["--steps", "many"], tmp, "'many' is not a valid integer", code=2)
    helped = run(probe_command, ["--help"])
    assert helped.exit_code == 0 and "Usage:" in helped.output and "--layer" in helped.output


def test_skipped_file_warning_is_one_line(tmp):
    (tmp / "images" / "notes.txt").write_text("not an image")
    result = run(probe_command, probe_args(tmp, tmp / "out"))
    assert result.exit_code == 0, result.output
    assert result.stderr.strip().splitlines() == [
        "warning: skipping notes.txt is not a readable PNG/JPEG image (suffix '.txt' is not one of .png, .jpg, .jpeg)"]


# --------------------------------------------------------------------------- issue 13: inconsistencies

@pytest.mark.parametrize("command, args", [
    (probe_command, None),
    (train_command, [*SCENES, "--resume"]),
    (demo_command, ["--quick", "--resume"]),
])
def test_resume_with_nothing_to_resume(tmp, command, args):
    out = tmp / "empty"
    out.mkdir()
    args = probe_args(tmp, out, "--resume") if args is None else [*args, "--out", out]
    refused(command, args, out, "nothing to resume")


@pytest.mark.parametrize("command, args", [
    (probe_command, None),
    (demo_command, ["--quick"]),
])
def test_overwrite_and_resume_exclude_each_other(tmp, command, args):
    out = tmp / "out"
    args = probe_args(tmp, out) if args is None else [*args, "--out", out]
    refused(command, [*args, "--overwrite", "--resume"], out, "--overwrite and --resume exclude each other", code=2)


def test_files_follow_the_umask(tmp):
    old = os.umask(0o022)
    try:
        out = finished_probe(tmp, tmp / "out")
    finally:
        os.umask(old)
    for name in ("table.json", "occlusion-3/result.npz", "occlusion-3/summary.json", "occlusion-3/provenance.json"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


def test_trf_smaller_than_the_patch_is_said(tmp):
    args = probe_args(tmp, tmp / "out")
    args[2] = "1"  # conv 3x3 + ReLU: a 3 px TRF under a 5 px patch
    result = run(probe_command, args)
    assert result.exit_code == 0, result.output
    assert "smaller than the 5 px patch" in result.stderr


# --------------------------------------------------------------------------- issue 12: bugs keep their traceback

def test_a_library_type_error_is_a_bug_with_its_traceback(tmp, monkeypatch):
    import cli.probe

    def buggy(*args, **kwargs):
        return None + 1  # a real TypeError inside the library

    monkeypatch.setattr(cli.probe, "load_images", buggy)
    result = run(probe_command, probe_args(tmp, tmp / "out"))
    assert isinstance(result.exception, TypeError) and "Error:" not in result.stderr
    monkeypatch.undo()
    bad = run(probe_command, probe_args(tmp, tmp / "out", "--stride", 0))  # bad input still gets one line
    assert_one_line_error(bad, "stride=0")


# --------------------------------------------------------------------------- more cases, beyond the list

@pytest.mark.parametrize("extra, fragment", [
    (["--resize", "0"], "resize"),
    (["--resize", "a,b"], "--resize 'a,b' is not a comma list of integers"),
    (["--resize", "1,2,3"], "has 3 numbers"),
    (["--neuron", "1,2"], "has 2 numbers"),
    (["--units", "abc"], "units='abc'"),
    (["--units", "9-random"], "1 <= N <= 4"),
    (["--layer", "nope"], "nope"),
    (["--max-images", "0"], "--max-images"),
    (["--max-pixels", "100"], "over the limit of 100"),
    (["--on-bad", "error", "--images", "mixed"], "notes.txt is not a readable PNG/JPEG image"),
    (["--images", "sizes"], "images have different sizes"),
    (["--weights", "w.pt"], "weights file 'w.pt' does not exist"),
    (["--threshold", "-0.1"], "threshold=-0.1"),
    (["--device", ""], "device ''"),
    (["--dataset", "scenes"], "give exactly one of --images DIR and --dataset SPEC"),
    (["--images", "nowhere"], "does not exist"),
])
def test_more_probe_options(tmp, extra, fragment):
    (tmp / "mixed").mkdir()
    (tmp / "mixed" / "notes.txt").write_text("x")
    Image.new("RGB", (24, 24)).save(tmp / "mixed" / "a.png")
    (tmp / "sizes").mkdir()
    Image.new("RGB", (24, 24)).save(tmp / "sizes" / "a.png")
    Image.new("RGB", (20, 24)).save(tmp / "sizes" / "b.png")
    out = tmp / "out"
    refused(probe_command, probe_args(tmp, out) + [str(e) for e in extra], out, fragment)


def test_corrupt_provenance(tmp):
    out = finished_probe(tmp, tmp / "out")
    (out / "occlusion-3" / "provenance.json").write_text("{not json")
    refused(probe_command, probe_args(tmp, out, "--resume"), out, "provenance.json", "not valid JSON")


def test_weights_with_a_checkpoint(tmp):
    ckpt = tiny_checkpoint(tmp / "m.pt")
    refused(probe_command, probe_args(tmp, tmp / "o", "--weights", "x", model=ckpt), tmp / "o",
            "--weights does not apply")


@pytest.mark.parametrize("toml, fragment", [
    ('steps = "ten"\n', 'c.toml: steps = "ten"; expected an integer'),
    ("model = 5\n", "c.toml: [model] 5; expected a table"),
    ("lr = nan\n", "c.toml: lr = nan; expected a finite number"),
    ("[model]\nbatch_norm = 1\n", "[model] batch_norm = 1; expected true or false"),
    ("[model]\nextra_layers = [4]\n", "extra_layers = [4]; expected a list of strings"),
])
def test_more_toml_fields(tmp, toml, fragment):
    (tmp / "c.toml").write_text(toml)
    refused(train_command, ["--config", "c.toml", "--out", tmp / "r"], tmp / "r", fragment)


@pytest.mark.parametrize("args, fragment", [
    (["--scale-range", 2, 1], "0 < low <= high"),
    (["--steps", 0], "steps must be a positive integer"),
    (["--dataset-option", "colour=3"], "colour"),
    (["--context", "globl"], "did you mean: global"),
    (["--config", "."], "is a directory"),
])
def test_more_train_options(tmp, args, fragment):
    refused(train_command, [*SCENES, *args, "--out", tmp / "r"], tmp / "r", fragment)


def test_train_resume_without_a_run(tmp):
    (tmp / "r").mkdir()
    refused(train_command, ["--resume", "--out", tmp / "r"], tmp / "r", "nothing to resume")


def test_eval_text_file_as_checkpoint(tmp):
    (tmp / "notes.pt").write_text("hello")
    refused(eval_command, [tmp / "notes.pt"], tmp / "notes.pt", "a text file starting with 'hello'")


@pytest.mark.parametrize("args, fragment", [
    (["--size", 8], "larger than the 8x8 image"),
    (["--probe-images", 100], "more than the 4 validation images"),
    (["--steps", 0], "steps must be a positive integer"),
])
def test_demo_checks_before_training(tmp, args, fragment):
    refused(demo_command, ["--quick", *args, "--out", tmp / "demo"], tmp / "demo", fragment)


def test_demo_out_is_a_file(tmp):
    (tmp / "f").write_text("x")
    refused(demo_command, ["--quick", "--out", tmp / "f"], tmp / "f", "is a file")


def test_figures_missing_input(tmp):
    refused(figures_command, [tmp / "nope", "--out", tmp / "figs"], tmp / "figs", "does not exist")


def test_rf_folder_as_model(tmp):
    (tmp / "run").mkdir()
    refused(rf_command, [tmp / "run"], tmp / "run", "is a folder")


def test_dataset_image_over_pillows_pixel_limit_is_one_valueerror(tmp):
    """Dataset images are read when a batch needs them: a decompression bomb there is a ValueError naming the
    file (one line through the commands), not Pillow's DecompressionBombError traceback."""
    from parsenet.data.base import read_image, read_label_png

    huge = huge_png_header(tmp / "huge.png")
    for read, what in ((read_image, "image"), (read_label_png, "mask")):
        with pytest.raises(ValueError, match=rf"cannot read {what} .*huge\.png: .*pixels") as err:
            read(huge)
        assert "\n" not in str(err.value)
