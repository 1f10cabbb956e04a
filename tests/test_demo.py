"""The end-to-end demo, erf-figures and the report, on the quick budget."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli.demo import main as demo_main
from cli.figures import main as figures_main
from erf.result import ERFResult
from lab import feature_norms, predict
from parsenet.config import ParseNetConfig
from parsenet.model import build_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(demo_main, ["--quick", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"report: {out / 'report.md'}" in result.output
    return out


def test_demo_writes_report_with_every_figure(demo_dir):
    md = (demo_dir / "report.md").read_text()
    html = (demo_dir / "report.html").read_text()
    figures = sorted((demo_dir / "figures").glob("*.png"))
    stems = {p.stem for p in figures}
    expected = {"unit_panels", "trf_vs_erf_FCN", "trf_vs_erf_ParseNet", "context_fc7_occlusion",
                "context_score_occlusion", "feature_scale_ParseNet", "segmentation", "methods_ParseNet_fc7",
                "training_curves", "reach_occlusion", "reach_gradient", "context_fc7_gradient"}
    assert expected <= stems
    for p in figures:  # every figure is a readable PNG, embedded in both reports
        with Image.open(p) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert f"figures/{p.name}" in md
    assert html.count("data:image/png;base64,") == len(figures)
    for header in ("## The question", "| model | pixel acc", "| model | layer | method | TRF side"):
        assert header in md
    # Captions are written for a reader, not file names.
    assert "### fc7: occlusion ERF with and without global context" in md and "### context fc7" not in md


def test_demo_results_load_and_match_report(demo_dir):
    rows = []
    for model in ("fcn", "parsenet"):
        for layer in ("conv5_3", "fc7", "score"):
            for method in ("occlusion", "gradient"):
                r = ERFResult.load(demo_dir / "probe" / model / layer / method)
                assert r.layer == layer and r.method == method
                rows.append(r.table_row())
        neuron = ERFResult.load(demo_dir / "probe" / model / "fc7" / "neuron")
        assert neuron.mode == "neuron" and neuron.image_maps.shape[0] == len(neuron.images)
    md = (demo_dir / "report.md").read_text()
    fc7 = ERFResult.load(demo_dir / "probe" / "parsenet" / "fc7" / "occlusion").table_row()
    assert f"| ParseNet | fc7 | occlusion | {fc7['trf_side']:.0f} | {fc7['erf_side']:.0f} ±" in md
    # The first paragraph answers, per layer and method, from the same 90%-mass sides the table shows.
    answer = md.split("\n\n")[1]
    assert answer.startswith("With global context (ParseNet against FCN)")
    for layer in ("conv5_3", "fc7", "score"):
        for method in ("occlusion", "gradient"):
            a, b = (ERFResult.load(demo_dir / "probe" / m / layer / method).summary["reach"]
                    for m in ("fcn", "parsenet"))
            said = answer.split(f"{layer} ({method}): ")[1].split(" px.")[0]
            assert f"{b['far_share']:.2f} against {a['far_share']:.2f}" in said
            assert f"90%-mass side {b['mass_side@0.9']:.0f} against {a['mass_side@0.9']:.0f} px" in said
            verdict = said.split(",")[0]
            assert verdict in ("wider", "narrower") or verdict.startswith("the same")
            if verdict == "wider":
                assert b["far_share"] > a["far_share"]
            if verdict == "narrower":
                assert b["far_share"] < a["far_share"]
            assert f"| ParseNet | {layer} | {method} |" in md and f"| {b['mass_side@0.9']:.0f} [" in md
    for run in ("fcn", "parsenet"):
        summary = json.loads((demo_dir / "train" / run / "summary.json").read_text())
        assert summary["finished"]
        assert f"{100 * summary['best']['metrics']['mean_iou']:.1f}" in md


def test_demo_refuses_existing_folder_then_resumes(demo_dir):
    runner = CliRunner()
    refused = runner.invoke(demo_main, ["--quick", "--out", str(demo_dir), "--no-progress"])
    assert refused.exit_code != 0
    assert "exists; pass --overwrite" in refused.output and "Traceback" not in refused.output
    before = (demo_dir / "probe" / "parsenet" / "fc7" / "occlusion" / "result.npz").read_bytes()
    resumed = runner.invoke(demo_main, ["--quick", "--out", str(demo_dir), "--no-progress", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert "training finished earlier, kept" in resumed.output
    assert (demo_dir / "probe" / "parsenet" / "fc7" / "occlusion" / "result.npz").read_bytes() == before


def test_demo_probes_record_provenance_and_exact_images(demo_dir):
    for model in ("fcn", "parsenet"):
        for layer, method in [(l, m) for l in ("conv5_3", "fc7", "score") for m in ("occlusion", "gradient")] + \
                [("fc7", "neuron")]:
            made_from = json.loads((demo_dir / "probe" / model / layer / method / "provenance.json").read_text())
            assert made_from["layer"] == layer and made_from["method"] == ("gradient" if method == "gradient"
                                                                           else "occlusion")
        # The units probe got the dataset's mean and std, so its display images are the scenes' own pixels,
        # which the neuron result stores as the dataset gives them.
        units = ERFResult.load(demo_dir / "probe" / model / "fc7" / "occlusion")
        scenes = ERFResult.load(demo_dir / "probe" / model / "fc7" / "neuron").display_images
        assert units.config["display_images"] == "exact"
        for j in {int(j) for j in units.topk_images.ravel() if j >= 0}:
            np.testing.assert_array_equal(units.display_images[j], scenes[j])


def test_demo_resume_refuses_a_result_made_from_other_settings(demo_dir, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(demo_dir, copy)
    record = copy / "probe" / "fcn" / "fc7" / "gradient" / "provenance.json"
    made_from = json.loads(record.read_text())
    record.write_text(json.dumps({**made_from, "settings": {**made_from["settings"], "seed": 7}}))
    refused = CliRunner().invoke(demo_main, ["--quick", "--out", str(copy), "--no-progress", "--resume"])
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "made from other inputs (seed: 7 there, 0 now)" in refused.output


def test_erf_figures_on_demo_folder(demo_dir, tmp_path):
    result = CliRunner().invoke(figures_main, [str(demo_dir / "probe"), "--out", str(tmp_path), "--format", "svg"])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.glob("*.svg"))
    assert "context_fc7_occlusion.svg" in written and "unit_panels.svg" in written
    assert "training_curves.svg" not in written  # no run folders were given


def test_erf_figures_bad_inputs(tmp_path, demo_dir):
    runner = CliRunner()
    missing = runner.invoke(figures_main, [str(tmp_path / "nope"), "--out", str(tmp_path / "f")])
    assert missing.exit_code != 0 and "does not exist" in missing.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(figures_main, [str(empty), "--out", str(tmp_path / "f")])
    assert nothing.exit_code != 0 and "holds no ERF result" in nothing.output
    partial = tmp_path / "partial"
    partial.mkdir()
    src = demo_dir / "probe" / "fcn" / "fc7" / "occlusion"
    (partial / "summary.json").write_text((src / "summary.json").read_text())
    broken = runner.invoke(figures_main, [str(partial), "--out", str(tmp_path / "f")])
    assert broken.exit_code != 0 and "result.npz missing" in broken.output
    assert "Traceback" not in missing.output + nothing.output + broken.output


def test_feature_norms_after_l2_norm_equal_the_scale():
    torch.manual_seed(0)
    model = build_model(ParseNetConfig(num_classes=4, width=1 / 8, batch_norm=True, extra_layers=("conv5_3",)))
    images = torch.randn(2, 3, 64, 64)
    before, after = feature_norms(model, images)
    assert set(before) == {"conv4_3", "conv5_3", "fc7", "pool6"}
    assert set(after) == {"conv5_3", "fc7", "pool6"}  # conv4_3 is not fused, so it is not normalised
    assert before["fc7"].shape == (2 * 8 * 8,) and before["pool6"].shape == (2,)
    # With every scale at its initial 10, ||10 * x / ||x|| || = 10 wherever x != 0.
    nonzero = before["fc7"] > 0
    np.testing.assert_allclose(after["fc7"][nonzero], 10.0, rtol=1e-4)
    np.testing.assert_allclose(after["pool6"], 10.0, rtol=1e-4)


def test_predict_is_argmax_of_logits():
    torch.manual_seed(0)
    model = build_model(ParseNetConfig(num_classes=3, width=1 / 8, batch_norm=True)).eval()
    images = torch.randn(3, 3, 40, 48)
    labels = predict(model, images, batch_size=2)
    with torch.no_grad():
        expected = model(images)["out"].argmax(1).numpy()
    assert labels.shape == (3, 40, 48)
    np.testing.assert_array_equal(labels, expected)
