"""The ERF browser's site writer, its measures and its command (no browser; see test_browse_chromium.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from browse_helpers import downgrade_to_v1, tiny_images, tiny_net, tiny_results
from cli.browse import main
from conftest import assert_one_line_error
from erf.graph import truncate
from erf.result import ERFResult, build_result
from erf.rf import LayerRF
from lab.browse import BrowseConfig, find_results, unit_measures, write_browser


def _result(maps: np.ndarray, H: int = 8, W: int = 8) -> ERFResult:
    U = len(maps)
    return build_result(method="occlusion", mode="units", layer="conv", image_size=(H, W), config={}, model={},
                        images=["a"], trf=LayerRF("l", (1, 1), (4.0, 4.0), (1.0, 1.0), (0.0, 0.0), False, (H, W)), units=np.arange(U), maps=maps,
                        trf_areas=np.full(U, 16.0), topk_images=np.zeros((U, 1)), topk_locations=np.zeros((U, 1, 2)),
                        topk_values=np.arange(U, dtype=float)[:, None] + 1)


def test_measures_hand_computed():
    # Canvas 16x16 for 8x8 images, unit at (8, 8); far radius = 0.25 * 8 = 2 px.
    single = np.zeros((16, 16)); single[8, 8] = 1.0
    lobes = np.zeros((16, 16)); lobes[8, 8] = 1.0; lobes[8, 13] = 1.0  # a second lobe 5 px away
    rows = unit_measures(_result(np.stack([single, lobes]).astype(np.float32)))
    assert rows[0]["side"] == 1.0 and rows[0]["mass90"] == 1.0 and rows[0]["far_share"] == 0.0
    assert rows[0]["erf_over_trf"] == 0.25 and rows[0]["activation"] == 1.0
    # The far lobe doubles the half-max area (side sqrt 2) but the 90% square must reach 5 px: side 11.
    assert rows[1]["side"] == pytest.approx(2 ** 0.5) and rows[1]["mass90"] == 11.0 and rows[1]["far_share"] == 0.5
    assert rows[1]["unit"] == 1 and rows[1]["activation"] == 2.0


def test_measures_empty_map_are_none():
    rows = unit_measures(_result(np.zeros((1, 16, 16), np.float32)))
    assert rows[0]["side"] is None and rows[0]["mass90"] is None and rows[0]["far_share"] is None


def test_probe_stores_what_the_browser_shows(tmp_path):
    """Format 2: the top-K images as seen, the unit's activation map on each, and its per-image discrepancy."""
    folder, = tiny_results(tmp_path, seeds=(0,))
    res = ERFResult.load(folder)
    assert res.format_version == 2 and res.config["display_images"] == "exact"
    images = tiny_images()
    U, K = res.topk_images.shape
    assert res.topk_maps.shape == (U, K) + tuple(res.config["grid"])
    with torch.inference_mode():
        act = truncate(tiny_net(0), "2")(images.images).numpy()  # (N, C, h, w)
    for u, k in [(0, 0), (U - 1, K - 1)]:
        j = res.topk_images[u, k]
        np.testing.assert_allclose(res.topk_activations[u, k], act[j, res.units[u]], rtol=1e-5, atol=1e-6)
        y, x = res.topk_locations[u, k]
        assert res.topk_values[u, k] == pytest.approx(act[j, res.units[u], y, x], rel=1e-5)
    # Pixels as a person sees them: the normalisation undone, rounded to uint8.
    seen = np.clip((images.images[0] * torch.tensor(images.std)[:, None, None]
                    + torch.tensor(images.mean)[:, None, None]).permute(1, 2, 0).numpy() * 255 + 0.5, 0, 255)
    if 0 in res.topk_images:
        assert np.abs(res.display_images[0].astype(int) - seen.astype(int)).max() <= 1


def test_site_layout_and_pairs(tmp_path):
    tiny_results(tmp_path / "probes")
    site = write_browser([tmp_path / "probes"], tmp_path / "site")
    assert (site / ".erf-browse").is_file() and (site / "browse.js").is_file()
    for model in ("model0--layer2", "model1--layer2"):
        assert (site / model / "index.html").is_file()
        for u in range(5):
            assert (site / model / "unit" / f"{u}.html").is_file()
            assert (site / model / "img" / f"erf_{u}.png").is_file() and (site / model / "img" / f"topk_{u}.jpg").is_file()
    page = (site / "compare" / "model0--layer2--model1--layer2.html").read_text()
    assert '"matched": true' in page
    unit3 = (site / "model0--layer2" / "unit" / "3.html").read_text()
    assert 'id="unit-number">3<' in unit3 and "img/erf_3.png" in unit3 and "topk_3.jpg" in unit3
    assert not list(tmp_path.glob(".site.*"))  # no temporary folder left behind
    # Unit rows of the overview carry the same measures as unit_measures.
    data = json.loads((site / "model0--layer2" / "index.html").read_text().split("const DATA = ")[1].split(";\n")[0])
    assert data["units"] == unit_measures(ERFResult.load(tmp_path / "probes" / "model0" / "layer2"))


def test_old_result_renders_with_note(tmp_path):
    folder, = tiny_results(tmp_path / "probes", seeds=(0,))
    downgrade_to_v1(folder)
    assert ERFResult.load(folder).topk_maps is None
    site = write_browser([folder], tmp_path / "site")
    unit = (site / "layer2" / "unit" / "0.html").read_text()
    assert "format version 1" in unit and "rerun erf-probe" in unit and "topk_0.jpg" not in unit
    assert (site / "layer2" / "img" / "erf_0.png").is_file() and not (site / "layer2" / "img" / "topk_0.jpg").exists()


def test_rerun_replaces_only_a_browser(tmp_path):
    folder, = tiny_results(tmp_path / "probes", seeds=(0,))
    write_browser([folder], tmp_path / "site")
    write_browser([folder], tmp_path / "site")  # an earlier browser is replaced
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an ERF browser"):
        write_browser([folder], tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"


def test_find_results_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_results([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no ERF result folder"):
        find_results([tmp_path / "empty"])
    folder, = tiny_results(tmp_path / "probes", seeds=(0,))
    with pytest.raises(ValueError, match="given twice"):
        find_results([folder, tmp_path / "probes"])


@pytest.mark.parametrize("kwargs, match", [({"tile": 8}, "tile=8"), ({"map_side": 5000}, "map_side=5000"),
                                           ({"far_fraction": 1.5}, "far_fraction=1.5")])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BrowseConfig(**kwargs)


def test_cli_writes_site_and_rejects_bad_input(tmp_path):
    folder, = tiny_results(tmp_path / "probes", seeds=(0,))
    ok = CliRunner().invoke(main, [str(folder), "--out", str(tmp_path / "site")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip().endswith("index.html")
    bad = CliRunner().invoke(main, [str(tmp_path / "missing"), "--out", str(tmp_path / "site2")])
    assert_one_line_error(bad, "missing", "does not exist")
    assert not (tmp_path / "site2").exists()
    bad = CliRunner().invoke(main, [str(folder), "--out", str(tmp_path / "site3"), "--tile", "4"])
    assert_one_line_error(bad, "tile=4")


def test_demo_browser_beside_the_report(tmp_path):
    from lab.browse import DEMO_BROWSER, write_demo_browser

    tiny_results(tmp_path / "run" / "probe")
    index = write_demo_browser(tmp_path / "run")
    assert index == tmp_path / "run" / DEMO_BROWSER and index.is_file()
    assert "model0/layer2 against model1/layer2" in index.read_text()


def test_unpaired_results_compare_as_distributions(tmp_path):
    from erf.occlusion import probe_occlusion

    tiny_results(tmp_path / "probes", seeds=(0,))
    probe_occlusion(tiny_net(1), "2", tiny_images(), patch=5, stride=3, top_k=2, units=[1, 3]).save(
        tmp_path / "probes" / "subset" / "layer2")
    site = write_browser([tmp_path / "probes"], tmp_path / "site")
    page = (site / "compare" / "model0--layer2--subset--layer2.html").read_text()
    assert '"matched": false' in page and "compared as distributions" in page and 'id="pairs"' not in page
    assert "side by side" not in (site / "model0--layer2" / "unit" / "0.html").read_text()  # no unit to pair with


def test_page_numbers():
    from lab.browse import _fmt

    assert (_fmt(0.12345), _fmt(12345.6), _fmt(3), _fmt("a<b")) == ("0.123", "12346", "3", "a&lt;b")
    assert _fmt(None) == _fmt(float("nan")) == "–"  # a statistic that does not exist
