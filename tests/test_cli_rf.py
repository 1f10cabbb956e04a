"""erf-rf through click's test runner: output, and one clear line for each kind of bad input."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from click.testing import CliRunner

from cli.rf import main, parse_input_size


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_vgg16_json_gives_pool5_212_32():
    result = run("vgg16", "--input-size", "224", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["model"] == "vgg16" and data["input_size"] == [224, 224]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["features.30"]["rf"] == [212, 212] and layers["features.30"]["jump"] == [32, 32]
    assert layers["features.30"]["size"] == [7, 7] and layers["classifier.6"]["is_global"]


def test_resnet50_table_gives_layer4_427_at_the_natural_size():
    result = run("resnet50", "--layer", "layer3", "--layer", "layer4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["layer", "size", "TRF", "jump", "centre(0,0)", "global"]
    assert lines[1].split() == ["layer3", "14x14", "267", "16", "(0,", "0)"]
    assert lines[2].split() == ["layer4", "7x7", "427", "32", "(0,", "0)"]


def test_rectangular_input_and_global_rows():
    result = run("resnet18", "--input-size", "224x320", "--layer", "layer4", "--layer", "fc")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert rows[0][:4] == ["layer4", "7x10", "435", "32"]
    assert rows[1][:3] == ["fc", "1x1", "224x320"] and rows[1][-1] == "yes"


def test_local_weights_file(tmp_path):
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "w.pt")
    result = run("alexnet", "--weights", str(tmp_path / "w.pt"), "--layer", "features.12", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["layers"][0]["rf"] == [195, 195]


@pytest.mark.parametrize("args, message", [
    (["resnt50"], "Error: unknown model 'resnt50' (did you mean: resnet50"),
    (["resnet50", "--layer", "layer5"], "Error: unknown layer in ResNet 'layer5' (did you mean: "),
    (["vgg16", "--input-size", "16"], "Error: input size 16x16 is too small: layer 'features.30' (MaxPool2d)"),
    (["vgg16", "--input-size", "22y4"], "Error: malformed --input-size '22y4'; expected a positive integer"),
    (["vgg16", "--weights", "IMAGENET1K_V9"], "Error: unknown weights 'IMAGENET1K_V9' for vgg16"),
])
def test_bad_input_is_one_line_on_stderr(args, message):
    result = run(*args)
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


@pytest.mark.parametrize("text, size", [("224", (224, 224)), ("224x320", (224, 320)), (" 96X64 ", (96, 64))])
def test_parse_input_size(text, size):
    assert parse_input_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "224x0", "-5", "224x", "x224", "a", "1.5", "2x3x4"])
def test_parse_input_size_rejects(text):
    with pytest.raises(ValueError, match="malformed --input-size"):
        parse_input_size(text)


def test_list_layers_needs_nothing_but_the_model():
    from cli.probe import probe_command

    for command, args in ((main, ["resnet18", "--list-layers"]), (probe_command, ["--list-layers", "resnet18"])):
        result = CliRunner().invoke(command, args)
        assert result.exit_code == 0, result.output
        names = result.stdout.split()
        assert "layer4" in names and "layer1.0.add" in names and names.index("conv1") < names.index("layer1.0.add")
    result = run("resnet81", "--list-layers")
    assert result.exit_code == 1 and "unknown model 'resnet81' (did you mean: resnet18" in result.output
    assert "Traceback" not in result.output


def test_vit_table_says_where_the_trf_becomes_global():
    pytest.importorskip("timm")
    result = run("timm:vit_tiny_patch16_224", "--layer", "patch_embed", "--layer", "blocks.0", "--json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.stdout)["layers"]}
    assert layers["patch_embed"]["rf"] == [16, 16] and layers["patch_embed"]["size"] == [14, 14]
    assert layers["blocks.0"]["is_global"] and "scaled_dot_product_attention" in layers["blocks.0"]["global_from"]
