import errno
import random

import numpy as np
import pytest
import torch
from torch import nn

from parsenet.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    load_trained_model,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from parsenet.config import ParseNetConfig

CLASSES = ["sky", "road", "car"]
COLORS = [[0, 0, 255], [128, 128, 128], [255, 0, 0]]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)


class _Tiny(nn.Module):
    """Stand-in with a config attribute, like ParseNet."""

    def __init__(self):
        super().__init__()
        self.config = ParseNetConfig(num_classes=3, width=1 / 8, batch_norm=True)
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn = nn.BatchNorm2d(3)


def _save(path, model=None, **kw):
    model = model or _Tiny()
    args = dict(model=model, step=7, classes=CLASSES, colors=COLORS, mean=MEAN, std=STD)
    args.update(kw)
    save_checkpoint(path, **args)
    return model


def test_round_trip_keeps_everything(tmp_path):
    model = _Tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    model.conv.weight.sum().backward()
    opt.step()
    sched.step()
    _save(tmp_path / "last.pt", model, optimizer=opt, scheduler=sched, metrics={"mean_iou": 0.5},
          train_config={"steps": 10})
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["version"] == 1
    assert ckpt["step"] == 7 and ckpt["classes"] == CLASSES and ckpt["colors"] == COLORS
    assert ckpt["mean"] == pytest.approx(MEAN) and ckpt["std"] == pytest.approx(STD)
    assert ckpt["model_config"] == model.config.to_dict()
    assert ckpt["metrics"] == {"mean_iou": 0.5} and ckpt["train_config"] == {"steps": 10}
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    opt2 = torch.optim.SGD(_Tiny().parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict(ckpt["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], opt.state_dict()["state"][0]["momentum_buffer"])
    assert ckpt["scheduler"]["last_epoch"] == 1
    # Loads without unpickling code.
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 7


def test_ddp_style_wrapper_is_unwrapped(tmp_path):
    inner = _Tiny()
    wrapper = nn.Module()
    wrapper.module = inner  # what DistributedDataParallel looks like from outside
    _save(tmp_path / "c.pt", wrapper)
    assert set(load_checkpoint(tmp_path / "c.pt")["model"]) == set(inner.state_dict())


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _save(tmp_path / "c.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])
    assert set(rng_state()) == {"python", "numpy", "torch", "cuda"}


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    _save(path, step=1)
    before = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError) as info:
        _save(path, step=2)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_model_rebuilt_from_file_alone(tmp_path):
    from parsenet.model import build_model

    cfg = ParseNetConfig(num_classes=3, width=1 / 8, batch_norm=True, context="global")
    model = build_model(cfg).eval()
    _save(tmp_path / "m.pt", model, metrics={"mean_iou": 0.25})
    loaded = load_trained_model(tmp_path / "m.pt")
    assert not loaded.model.training
    x = torch.randn(1, 3, 40, 48)
    with torch.no_grad():
        assert torch.equal(loaded.model(x)["out"], model(x)["out"])
    assert loaded.config == cfg and loaded.config.to_dict() == cfg.to_dict()
    assert loaded.classes == CLASSES and loaded.colors == COLORS and loaded.mean == pytest.approx(MEAN)
    assert loaded.metrics == {"mean_iou": 0.25} and loaded.step == 7 and loaded.ignore_index == 255
    assert loaded.path == str(tmp_path / "m.pt")
    # erf.load_model's view of the same file (parsenet registers the loader): the same facts in ``meta``.
    from erf.models import load_model

    meta = load_model(str(tmp_path / "m.pt")).meta
    assert meta["model_config"] == cfg.to_dict() and meta["classes"] == CLASSES and meta["step"] == 7


def test_weights_that_do_not_fit_the_config(tmp_path):
    _save(tmp_path / "m.pt", _Tiny())  # _Tiny's weights are not a ParseNet's
    with pytest.raises(ValueError, match="its weights do not fit the model its config builds"):
        load_trained_model(tmp_path / "m.pt")


def test_invalid_model_config(tmp_path):
    _save(tmp_path / "m.pt", model_config={"context": "globl"})
    with pytest.raises(ValueError, match="invalid model config: unknown ParseNet config keys|unknown context 'globl'"):
        load_trained_model(tmp_path / "m.pt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; expected a .pt file"):
        load_checkpoint(tmp_path)


def test_truncated_file(tmp_path):
    _save(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read checkpoint .* truncated or corrupt torch.save archive"):
        load_checkpoint(tmp_path / "t.pt")


def test_empty_file(tmp_path):
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"an empty file \(0 bytes\)"):
        load_checkpoint(tmp_path / "e.pt")


def test_text_file(tmp_path):
    (tmp_path / "x.pt").write_text("hello, I am notes\n")
    with pytest.raises(ValueError, match="a text file starting with 'hello, I am notes"):
        load_checkpoint(tmp_path / "x.pt")


def test_bare_state_dict(tmp_path):
    torch.save(nn.Linear(2, 2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(ValueError, match="not an erf-toolkit checkpoint: it holds a bare state_dict of 2 tensors"):
        load_checkpoint(tmp_path / "sd.pt")


def test_other_dict(tmp_path):
    torch.save({"epoch": 3, "net": {}}, tmp_path / "o.pt")
    with pytest.raises(ValueError, match=r"it holds a dict with keys \['epoch', 'net'\]"):
        load_checkpoint(tmp_path / "o.pt")


def test_pickled_whole_model(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(ValueError, match="arbitrary Python objects"):
        load_checkpoint(tmp_path / "whole.pt")


def test_newer_format_version(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(ValueError, match="format version 99; this erf-toolkit reads versions up to 1"):
        load_checkpoint(tmp_path / "c.pt")


def test_incomplete_checkpoint(tmp_path):
    _save(tmp_path / "c.pt")
    ckpt = torch.load(tmp_path / "c.pt", weights_only=True)
    del ckpt["model"]
    torch.save(ckpt, tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"is incomplete: missing \['model'\]"):
        load_checkpoint(tmp_path / "c.pt")


def test_save_rejects_bad_normalisation(tmp_path):
    with pytest.raises(ValueError, match="mean and std need 3 values"):
        _save(tmp_path / "c.pt", mean=(0.5,))


def test_save_needs_a_config(tmp_path):
    with pytest.raises(ValueError, match="no model_config given and Linear has no .config"):
        _save(tmp_path / "c.pt", nn.Linear(2, 2))
