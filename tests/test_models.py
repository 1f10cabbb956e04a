"""erf.models.load_model: torchvision names, weights (local files, the weights API), builders, checkpoints."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torchvision
from torch import nn

import parsenet  # noqa: F401 - registers the checkpoint loader, as the erf-* commands do
from erf.models import IMAGENET_MEAN, LoadedModel, load_model, register_model_loader


def test_torchvision_name_random_init_is_seeded_and_in_eval_mode():
    a, b = load_model("resnet18"), load_model("resnet18")
    assert isinstance(a, LoadedModel) and a.name == "resnet18" and not a.model.training
    assert a.mean == IMAGENET_MEAN and a.input_size == (224, 224) and a.meta["weights"] is None
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    state = torch.get_rng_state()
    load_model("resnet18")
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is left alone


def test_natural_input_size_comes_from_the_default_weights():
    assert load_model("efficientnet_b1").input_size == (240, 240)


def test_unknown_model_lists_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'resnet51' \(did you mean: resnet50.*\); expected a torchvision"):
        load_model("resnet51")


def test_missing_checkpoint_path():
    with pytest.raises(FileNotFoundError, match="checkpoint 'runs/nope/best.pt' does not exist"):
        load_model("runs/nope/best.pt")


def test_local_state_dict(tmp_path):
    sd = torchvision.models.resnet18().state_dict()
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], 7.0)
    torch.save(sd, tmp_path / "w.pt")
    lm = load_model("resnet18", weights=str(tmp_path / "w.pt"))
    assert torch.all(lm.model.fc.bias == 7.0) and lm.meta["weights"] == str(tmp_path / "w.pt")
    torch.save({"state_dict": sd}, tmp_path / "wrapped.pt")  # the common wrapper is unwrapped
    assert torch.all(load_model("resnet18", weights=str(tmp_path / "wrapped.pt")).model.fc.bias == 7.0)


def test_state_dict_that_does_not_fit_lists_keys_and_shapes(tmp_path):
    sd = torchvision.models.resnet18(num_classes=10).state_dict()
    del sd["layer1.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"does not fit resnet18: missing 1: layer1.0.conv1.weight; "
                                         r"unexpected 1: extra.weight; shape mismatch 2: fc.weight: "
                                         r"file \(10, 512\) vs model \(1000, 512\)"):
        load_model("resnet18", weights=str(tmp_path / "w.pt"))


def test_weights_file_that_is_not_a_state_dict(tmp_path):
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_model("resnet18", weights=str(tmp_path / "notes.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        load_model("resnet18", weights=str(tmp_path / "list.pt"))


@pytest.mark.parametrize("weights", ["IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"])
def test_weights_api_reads_the_hub_cache(tmp_path, monkeypatch, weights):
    """The weights API path, with the file it would download already in $TORCH_HOME (no network)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    w = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    sd = torchvision.models.resnet18().state_dict()
    sd["fc.bias"] = torch.full_like(sd["fc.bias"], 3.0)
    cache = tmp_path / "hub" / "checkpoints" / w.url.rsplit("/", 1)[-1]
    cache.parent.mkdir(parents=True)
    torch.save(sd, cache)
    lm = load_model("resnet18", weights=weights)
    assert torch.all(lm.model.fc.bias == 3.0) and not lm.model.training
    assert lm.meta["weights"] == "ResNet18_Weights.IMAGENET1K_V1" and len(lm.meta["categories"]) == 1000
    assert lm.mean == IMAGENET_MEAN and lm.input_size == (224, 224)


def test_unknown_weights_name():
    with pytest.raises(ValueError, match=r"unknown weights 'IMAGENET1K_V3' for resnet18 \(did you mean: IMAGENET1K_V1"):
        load_model("resnet18", weights="IMAGENET1K_V3")


def test_weights_of_another_model():
    with pytest.raises(ValueError, match="'VGG16_Weights.IMAGENET1K_V1' are not for resnet18"):
        load_model("resnet18", weights="VGG16_Weights.IMAGENET1K_V1")


def test_builder_spec(tmp_path):
    lm = load_model("tests.test_models:tiny_net")
    assert lm.name == "tests.test_models:tiny_net" and not lm.model.training and lm.input_size is None
    torch.save(tiny_net().state_dict(), tmp_path / "w.pt")
    assert load_model("tests.test_models:tiny_net", weights=str(tmp_path / "w.pt")).meta["weights"]


def tiny_net() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).train()


def not_a_module():
    return 42


@pytest.mark.parametrize("spec, error, match", [
    ("tests.test_nowhere:build", ValueError, "cannot import 'tests.test_nowhere'"),
    ("tests.test_models:tiny_nett", ValueError, r"unknown function in tests.test_models 'tiny_nett' \(did you mean: tiny_net"),
    ("tests.test_models:not_a_module", TypeError, r"returned a int; expected an nn.Module"),
])
def test_bad_builder(spec, error, match):
    with pytest.raises(error, match=match):
        load_model(spec)


def test_parsenet_checkpoint(tmp_path):
    from parsenet.checkpoint import save_checkpoint
    from parsenet.config import ParseNetConfig
    from parsenet.model import build_model

    model = build_model(ParseNetConfig(num_classes=3, width=1 / 8))
    save_checkpoint(tmp_path / "best.pt", model=model, step=5, classes=["a", "b", "c"],
                    mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    lm = load_model(str(tmp_path / "best.pt"))
    assert lm.name == f"parsenet:{tmp_path / 'best.pt'}" and lm.mean == (0.5, 0.5, 0.5) and lm.std == (0.25,) * 3
    assert lm.meta["classes"] == ["a", "b", "c"] and not lm.model.training
    assert torch.equal(lm.model.state_dict()["fc7_score.weight"], model.state_dict()["fc7_score.weight"])
    with pytest.raises(ValueError, match="does not apply to checkpoint"):
        load_model(str(tmp_path / "best.pt"), weights="DEFAULT")


def test_file_that_is_not_our_checkpoint_says_what_it_holds(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ValueError, match="is not an erf-toolkit checkpoint: it holds"):
        load_model(str(tmp_path / "r18.pt"))


def test_meta_device_builds_without_memory():
    lm = load_model("vgg16", device="meta")
    assert lm.model.features[0].weight.is_meta and not lm.model.training
    assert not load_model("tests.test_models:tiny_net", device="meta").model[0].weight.is_cpu


def test_erf_imports_nothing_of_ours_and_learns_checkpoints_from_parsenet(tmp_path):
    import subprocess
    import sys

    torch.save({"x": torch.zeros(1)}, tmp_path / "f.pt")
    code = ("import sys, erf, erf.models\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('parsenet', 'lab', 'cli', 'figures')]\n"
            f"try:\n    erf.models.load_model({str(tmp_path / 'f.pt')!r})\n"
            "except ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "no loader for model files is registered; `import parsenet`" in out


def test_registered_loader_claims_its_prefix():
    def toy(spec, weights):
        return LoadedModel(nn.Conv2d(3, 4, 3), spec, IMAGENET_MEAN, IMAGENET_MEAN, (32, 32), {"weights": weights})

    register_model_loader("toy-test:", toy, name="toy-test")
    try:
        lm = load_model("toy-test:a", weights="w")
        assert lm.name == "toy-test:a" and lm.model.out_channels == 4 and lm.meta == {"weights": "w"}
        assert not lm.model.training
    finally:
        from erf import models
        models._LOADERS[:] = [e for e in models._LOADERS if e[0] != "toy-test"]
    with pytest.raises(ValueError, match="unknown model 'toy-test:a'"):
        load_model("toy-test:a")


class _Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        x = self.conv1(x)
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace this
            x = self.drop(x)
        return self.conv2(x)


@pytest.mark.parametrize("factory", [_Untraceable, lambda: torchvision.models.resnet18(num_classes=4)])
def test_a_probe_leaves_the_callers_model_as_it_was(factory):
    from erf.gradient import probe_gradient
    from erf.graph import truncate

    torch.manual_seed(0)
    model = factory().train()  # in training mode, on the CPU, in float32
    x = torch.rand(1, 3, 32, 32)
    layer = "conv1"
    with pytest.warns(UserWarning, match="not fx-traceable") if isinstance(model, _Untraceable) else contextlib.nullcontext():
        probe_gradient(model, layer, images=x, rf=None if not isinstance(model, _Untraceable) else _dummy_rf())
        truncate(model, layer).to(torch.float64).eval()
    assert model.training and all(m.training for m in model.modules())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    model.eval()
    assert model(x).shape[0] == 1  # still runs: no leftover hook stops it


def _dummy_rf():
    from erf.rf import LayerRF

    return LayerRF("conv1", (32, 32), (3.0, 3.0), (1.0, 1.0), (0.0, 0.0), False, (32, 32))
