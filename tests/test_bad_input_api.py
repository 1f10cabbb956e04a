"""Bad input through the Python API, and the shared checks every command uses (erf.util, erf.runner)."""
import os

import numpy as np
import pytest
import torch

from erf.images import load_images
from erf.runner import ProbeSettings, check_probe_settings, provenance_difference
from erf.util import (atomic_write, check_field_types, check_path, finite_or_none, format_number, format_percent,
                      parse_device, state_dict_mismatch)
from parsenet.config import ParseNetConfig
from parsenet.trainer import TrainConfig


def test_load_images_mean_of_one_value(tmp_path):
    with pytest.raises(ValueError, match=r"mean=\(0.5,\); expected three finite numbers"):
        load_images(tmp_path, mean=(0.5,))


def test_load_images_of_a_number():
    with pytest.raises(ValueError, match="images source of type int; expected a folder"):
        load_images(123)


def test_load_images_empty_path():
    with pytest.raises(ValueError, match="image folder or file is an empty string"):
        load_images("")


def test_parsenet_config_with_a_string_for_a_number():
    with pytest.raises(ValueError, match='ParseNetConfig: num_classes = "21"; expected an integer'):
        ParseNetConfig(num_classes="21")


def test_train_config_with_a_string_for_a_float():
    with pytest.raises(ValueError, match='TrainConfig: lr = "fast"; expected a number'):
        TrainConfig(lr="fast")


def test_train_config_empty_out():
    with pytest.raises(ValueError, match="out is an empty string"):
        TrainConfig(out="")


@pytest.mark.parametrize("values, message", [
    ({"width": "wide"}, 'f.toml: width = "wide"; expected a number'),
    ({"batch_norm": "yes"}, 'f.toml: batch_norm = "yes"; expected true or false'),
    ({"extra_layers": "conv4_3"}, 'f.toml: extra_layers = "conv4_3"; expected a list of strings'),
    ({"scale_init": float("inf")}, "f.toml: scale_init = inf; expected a finite number"),
    ({"widht": 1.0}, "f.toml: unknown option 'widht' \\(did you mean: width\\?\\)"),
])
def test_check_field_types(values, message):
    with pytest.raises(ValueError, match=message):
        check_field_types(ParseNetConfig, values, "f.toml:")


def test_check_field_types_accepts_ints_for_floats_and_none_for_optionals():
    check_field_types(ParseNetConfig, {"width": 1, "extra_layers": ["conv4_3"]})
    check_field_types(TrainConfig, {"crop_size": None, "pretrained": None, "scale_range": [0.5, 2]})


@pytest.mark.parametrize("device, message", [
    ("gpu7", "unknown device 'gpu7'"),
    ("", "device ''"),
    ("cpu:1", "expected cpu without an index"),
    ("cuda:99", "cuda:99"),
])
def test_parse_device_names_the_available_devices(device, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_device(device)
    assert "available here: cpu" in str(info.value)


def test_parse_device_spelling_only():
    assert parse_device("cuda:3", present=False) == torch.device("cuda", 3)
    assert parse_device("cpu") == torch.device("cpu")


def test_check_path():
    with pytest.raises(ValueError, match="output folder is an empty string"):
        check_path("  ", "output folder")
    assert str(check_path("a/b", "x")) == "a/b"


def test_atomic_write_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "f.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o640


def test_finite_or_none_and_format_number():
    assert finite_or_none({"a": [1.0, float("nan")], "b": (float("inf"), 2)}) == {"a": [1.0, None], "b": [None, 2]}
    assert format_number(float("nan")) == "-" and format_number(None, missing="n/a") == "n/a"
    assert format_number(0.12345, ".2f") == "0.12"
    # numpy scalars come out as plain floats (json.dumps refuses float32), non-finite ones as None
    cleaned = finite_or_none([np.float32(0.5), np.float64("nan"), np.float32("inf"), np.int64(3)])
    assert cleaned == [0.5, None, None, 3] and type(cleaned[0]) is float


def test_format_percent():
    assert format_percent(0.1234) == "12.3" and format_percent(1.0, ".0f") == "100"
    assert format_percent(None) == "n/a" and format_percent(float("nan")) == "n/a"


def test_state_dict_mismatch():
    own = {"a": torch.zeros(2), "b": torch.zeros(3)}
    assert state_dict_mismatch(own, {"a": torch.zeros(2), "b": torch.zeros(3)}) == ""
    report = state_dict_mismatch(own, {"a": torch.zeros(4), "c": torch.zeros(1)})
    assert report == "missing 1: b; unexpected 1: c; shape mismatch 1: a: file (4,) vs model (2,)"


def test_provenance_difference_names_the_first_difference():
    base = {"method": "occlusion", "layer": "3", "model": "a" * 64, "images": "b" * 64,
            "settings": {"patch": 5, "stride": 3}}
    assert provenance_difference(base, dict(base)) is None
    assert provenance_difference(base, {**base, "model": "c" * 64}) == \
        "model weights (fingerprint): aaaaaaaaaaaa there, cccccccccccc now"
    assert provenance_difference(base, {**base, "settings": {"patch": 5, "stride": 2}}) == "stride: 3 there, 2 now"


def test_probe_settings_identity_keeps_only_what_changes_the_numbers():
    s = ProbeSettings(engine="full", batch_size=7, device="cpu", neuron=(0, "center"))
    assert s.identity("occlusion") == {"patch": 11, "stride": 3, "noise": "uniform", "top_k": None, "units": None,
                                       "neuron": [0, "center"], "threshold": 0.5, "seed": 0, "precision": "fp32"}
    assert s.identity("gradient") == {"neuron": [0, "center"], "noise_inputs": 0, "threshold": 0.5, "seed": 0}
    rep = ProbeSettings(protocol="replknet", protocol_size=512)
    assert rep.identity("gradient") == {"neuron": None, "noise_inputs": 0, "threshold": 0.5, "seed": 0,
                                        "protocol": "replknet", "protocol_size": 512}


def test_provenance_difference_sees_a_setting_on_one_side_only():
    """A replknet result asked for again with Luo's protocol differs in a key only the saved record has."""
    saved = {"method": "gradient", "layer": "3", "model": "m", "images": "i",
             "settings": ProbeSettings(protocol="replknet").identity("gradient")}
    now = {**saved, "settings": ProbeSettings().identity("gradient")}
    assert provenance_difference(saved, now) == "protocol: 'replknet' there, None now"
    assert provenance_difference(saved, saved) is None


@pytest.mark.parametrize("settings, n, message", [
    (ProbeSettings(patch=11), 2, "larger than the 8x8 image"),
    (ProbeSettings(patch=5, top_k=3), 2, "top_k=3 but there are 2 images"),
    (ProbeSettings(patch=5, top_k=1), 0, "0 images to probe"),
    (ProbeSettings(patch=5, top_k=1, threshold=1.0), 2, "threshold=1.0"),
    (ProbeSettings(patch=5, top_k=1, engine="fast"), 2, "unknown engine 'fast'"),
])
def test_check_probe_settings(settings, n, message):
    with pytest.raises(ValueError, match=message):
        check_probe_settings(settings, ("occlusion", "gradient"), (8, 8), n)


def test_parse_device_on_a_machine_with_two_gpus():
    # the CUDA branch, checked on any machine by stating the GPU count
    assert parse_device("cuda:1", gpus=2) == torch.device("cuda", 1)
    assert parse_device("auto", gpus=2) == torch.device("cuda")
    with pytest.raises(ValueError, match=r"this machine has 2 GPUs \(available here: cpu, cuda, cuda:0, cuda:1\)"):
        parse_device("cuda:2", gpus=2)
