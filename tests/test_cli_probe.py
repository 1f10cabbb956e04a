import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.probe import probe_command
from conftest import assert_one_line_error
from erf.result import ERFResult

skdata = pytest.importorskip("skimage.data")

TINY_NETS = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU())

def narrowing():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 2, 3), nn.ReLU())
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "tinynets_probe.py").write_text(TINY_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(skdata, name)()).resize((24, 24), Image.BILINEAR).save(images / f"{name}.png")
    return tmp_path, images


def run(args):
    return CliRunner().invoke(probe_command, [str(a) for a in args])


def base(images, out, *extra):
    return ["tinynets_probe:tiny", "--layer", "3", "--images", images, "--patch", 5, "--stride", 3, "--top-k", 2,
            "--no-progress", "--out", out, *extra]


def test_occlusion_round_trip_and_table(setup):
    tmp, images = setup
    result = run(base(images, tmp / "out", "--units", "0,2"))
    assert result.exit_code == 0, result.output
    assert "TRF side" in result.output and "ERF/TRF" in result.output and "occlusion" in result.output
    res = ERFResult.load(tmp / "out" / "occlusion-3")
    assert res.maps.shape == (2, 48, 48) and res.units.tolist() == [0, 2]
    assert res.images == ["astronaut.png", "chelsea.png", "coffee.png"]
    assert res.model["name"] == "tinynets_probe:tiny" and res.config["patch"] == [5, 5]
    table = json.loads((tmp / "out" / "table.json").read_text())
    assert table["rows"][0]["trf_side"] == 5.0 and table["images"] == 3
    # The printed table has the 90%-mass side of the layer map (the reach) next to the half-max side (the peak).
    assert "90% mass" in result.output and table["rows"][0]["mass90_side"] == res.summary["reach"]["mass_side@0.9"]
    row_line = next(line for line in result.output.splitlines() if line.startswith("3 "))
    assert row_line.split()[-1] == f"{res.table_row()['mass90_side']:.0f}"
    assert not (tmp / "out" / "occlusion-3" / "state.npz").exists()


def test_both_methods_two_layers(setup):
    tmp, images = setup
    result = run(base(images, tmp / "out", "--layer", "1", "--method", "both", "--neuron", "1,center"))
    assert result.exit_code == 0, result.output
    for sub in ("occlusion-3", "gradient-3", "occlusion-1", "gradient-1"):
        res = ERFResult.load(tmp / "out" / sub)
        assert res.mode == "neuron" and res.neuron[0] == 1 and res.image_maps.shape == (3, 24, 24)
    assert len(json.loads((tmp / "out" / "table.json").read_text())["rows"]) == 4


def test_gradient_center_position(setup):
    tmp, images = setup
    result = run(base(images, tmp / "out", "--method", "gradient", "--neuron", "center", "--noise-inputs", 2))
    assert result.exit_code == 0, result.output
    res = ERFResult.load(tmp / "out" / "gradient-3")
    assert res.mode == "position" and res.config["noise_inputs"] == 2


def test_existing_output_refused_then_overwrite(setup):
    tmp, images = setup
    (tmp / "out").mkdir()
    (tmp / "out" / "x").write_text("keep")
    assert_one_line_error(run(base(images, tmp / "out")), "exists and is not empty", "--overwrite", "--resume")
    assert run(base(images, tmp / "out", "--overwrite")).exit_code == 0
    assert (tmp / "out" / "x").read_text() == "keep"


def test_resume_finishes_an_interrupted_probe(setup):
    """An interrupted run left accumulators after one image; --resume finishes it and equals a fresh run."""
    from erf.images import load_images
    from erf.occlusion import probe_occlusion
    from tinynets_probe import tiny

    tmp, images = setup

    class Stop(Exception):
        pass

    def stop(done, name):
        raise Stop

    state = tmp / "out" / "occlusion-3" / "state.npz"
    with pytest.raises(Stop):
        probe_occlusion(tiny(), "3", load_images(images), patch=5, stride=3, top_k=2, state_path=state, on_image=stop)
    result = run(base(images, tmp / "out", "--resume"))
    assert result.exit_code == 0, result.output
    assert run(base(images, tmp / "fresh")).exit_code == 0
    a, b = ERFResult.load(tmp / "out" / "occlusion-3"), ERFResult.load(tmp / "fresh" / "occlusion-3")
    np.testing.assert_array_equal(a.maps, b.maps)
    again = run(base(images, tmp / "out", "--resume"))
    assert again.exit_code == 0 and "already done" in again.stderr


def test_unknown_layer(setup):
    tmp, images = setup
    args = base(images, tmp / "out")
    args[args.index("3")] = "33"
    assert_one_line_error(run(args), "unknown layer", "'33'", "did you mean")


def test_neuron_out_of_range(setup):
    tmp, images = setup
    assert_one_line_error(run(base(images, tmp / "out", "--neuron", "0,50,0")), "neuron (0, 50, 0) is outside layer",
                          "(4, 10, 10)")


def test_center_without_channel_for_occlusion(setup):
    tmp, images = setup
    result = run(base(images, tmp / "out", "--neuron", "center"))
    assert result.exit_code != 0 and "expected C,center or C,Y,X" in result.output


def test_empty_images_folder(setup):
    tmp, _ = setup
    (tmp / "empty").mkdir()
    assert_one_line_error(run(base(tmp / "empty", tmp / "out")), "is empty")


def test_missing_checkpoint(setup):
    tmp, images = setup
    args = base(images, tmp / "out")
    args[0] = str(tmp / "nope.pt")
    assert_one_line_error(run(args), "does not exist")


def test_images_and_dataset_exclusive(setup):
    tmp, images = setup
    result = run(base(images, tmp / "out", "--dataset", "scenes"))
    assert result.exit_code != 0 and "exactly one of --images DIR and --dataset SPEC" in result.output


def test_dataset_source(setup):
    tmp, _ = setup
    pytest.importorskip("parsenet.data")
    result = run(["tinynets_probe:tiny", "--layer", "3", "--dataset", "scenes", "--split", "val", "--max-images", 2,
                  "--resize", 24, "--patch", 5, "--stride", 5, "--top-k", 1, "--units", "1-random", "--no-progress",
                  "--out", tmp / "out"])
    assert result.exit_code == 0, result.output
    res = ERFResult.load(tmp / "out" / "occlusion-3")
    assert res.images == ["val_00000", "val_00001"] and len(res.units) == 1


def test_units_checked_for_every_layer_before_probing(setup):
    tmp, images = setup
    out = tmp / "units"
    # 4-random fits layer "1" (8 channels) but not layer "3" (2 channels), which comes second:
    # the error must come before the first layer's probe writes anything.
    result = run(["tinynets_probe:narrowing", "--layer", "1", "--layer", "3", "--images", images,
                  "--units", "4-random", "--no-progress", "--out", out])
    assert_one_line_error(result, "4-random", "1 <= N <= 2")
    assert not list(out.glob("*/result.npz"))


def test_replknet_protocol_through_erf_probe_prints_the_area_ratios_and_resumes_only_the_same(setup):
    """`--method gradient --protocol replknet`: the area-ratio table is printed and stored in table.json, and a
    finished result made at another protocol size is refused on --resume."""
    tmp, images = setup
    out = tmp / "rep"
    args = ["tinynets_probe:tiny", "--layer", "3", "--images", images, "--method", "gradient",
            "--protocol", "replknet", "--protocol-size", 32, "--out", out, "--no-progress"]
    res = run(args)
    assert res.exit_code == 0, res.output
    assert "3: RepLKNet area ratios at 32 px" in res.output
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [r["threshold"] for r in rows[0]["replknet"]["area_ratios"]] == [0.2, 0.3, 0.5, 0.99]
    assert ERFResult.load(out / "gradient-3").config["input_size"] == 32
    again = run(args[:-4] + [40, "--out", out, "--resume", "--no-progress"])
    assert again.exit_code != 0
    assert "protocol_size" in again.output
