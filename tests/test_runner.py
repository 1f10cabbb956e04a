"""erf.runner.run_probe's own options: where each result goes, the table, and a failed first probe's cleanup."""
import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from erf.images import ImageSet
from erf.result import ERFResult
from erf.runner import ProbeSettings, run_probe


def _one_image_at_a_time():
    """A model that refuses a batch (a hook on its conv): the layer checks pass (one image), the occlusion passes
    (batches of occluded copies, full re-inference) fail."""
    def refuse(module, args):
        if args[0].shape[0] > 1:
            raise RuntimeError("this model takes one image at a time")

    model = _tiny()
    model[0].register_forward_pre_hook(refuse)
    return model


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())


def _images(n=2, size=12):
    g = torch.Generator().manual_seed(0)
    return ImageSet(torch.randn(n, 3, size, size, generator=g), tuple(f"im{i}" for i in range(n)),
                    (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


SETTINGS = ProbeSettings(patch=3, stride=3, top_k=1, batch_size=4)


def test_default_layout_writes_method_dash_layer_and_the_table(tmp_path):
    rows = run_probe(_tiny(), _images(), ["1"], out=tmp_path / "out", methods=["occlusion", "gradient"],
                     settings=SETTINGS, log=lambda m: None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gradient-1", "occlusion-1", "table.json"]
    table = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["method"] for r in table["rows"]] == ["occlusion", "gradient"] == [r["method"] for r in rows]


def test_folder_and_no_table(tmp_path):
    out = tmp_path / "out"
    rows = run_probe(_tiny(), _images(), ["1"], out=out, methods=["occlusion", "gradient"], settings=SETTINGS,
                     folder="{layer}/{method}".format, table=None, log=lambda m: None)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_dir()) == \
        ["1", "1/gradient", "1/occlusion"]
    assert not (out / "table.json").exists()
    for method in ("occlusion", "gradient"):
        r = ERFResult.load(out / "1" / method)
        assert r.method == method and (out / "1" / method / "provenance.json").is_file()
    assert [r["method"] for r in rows] == ["occlusion", "gradient"]
    # A second call into the same folder with resume keeps both results and adds its own folder.
    run_probe(_tiny(), _images(), ["1"], out=out, settings=ProbeSettings(patch=3, stride=3, neuron=(0, "center")),
              folder="{layer}/neuron".format, table=None, resume=True, log=lambda m: None)
    assert ERFResult.load(out / "1" / "neuron").mode == "neuron"


@pytest.mark.parametrize("rel", ["../{layer}", "/tmp/{method}", ""])
def test_folder_outside_the_output_folder_refused_before_writing(tmp_path, rel):
    with pytest.raises(ValueError, match="expected a relative path inside the output folder"):
        run_probe(_tiny(), _images(), ["1"], out=tmp_path / "out", settings=SETTINGS, folder=rel.format,
                  log=lambda m: None)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_failed_first_probe_removes_only_the_folders_it_created(tmp_path):
    out = tmp_path / "out"
    run_probe(_tiny(), _images(), ["1"], out=out, methods=["gradient"], settings=SETTINGS,
              folder="{layer}/{method}".format, table=None, log=lambda m: None)
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    with pytest.raises(RuntimeError, match="one image at a time"):
        run_probe(_one_image_at_a_time(), _images(), ["1"], out=out, settings=replace(SETTINGS, engine="full"),
                  folder="1/{layer}-{method}".format, table=None, resume=True, log=lambda m: None)  # inside "1"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before
