"""The report's answer: computed from the reach measures, first in the page, and honest about its intervals."""
import numpy as np

from erf.result import build_result
from erf.rf import LayerRF
from figures.report import erf_rows, report_markdown
from lab.report import answer_sentences, compare_reach

H = W = 24


def _units_result(far_amp: float, seed: int, U: int = 12):
    """Occlusion-shaped units result: every unit map has a lobe at the unit and, scaled by far_amp, one far away."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:2 * H, :2 * W]
    maps = []
    for _ in range(U):
        near = np.exp(-((y - H) ** 2 + (x - W) ** 2) / (2 * 2.0 ** 2))
        fy, fx = H - 10 + rng.integers(-1, 2), W + 10 + rng.integers(-1, 2)
        far = np.exp(-((y - fy) ** 2 + (x - fx) ** 2) / (2 * 2.0 ** 2))
        maps.append(near + far_amp * rng.uniform(0.7, 1.0) * far)
    maps = np.stack(maps).astype(np.float32)
    return build_result(method="occlusion", mode="units", layer="fc7", image_size=(H, W), config={"threshold": 0.5},
                        model={"name": "m"}, images=["a"], trf=LayerRF("l", (1, 1), (40.0, 40.0), (1.0, 1.0), (0.0, 0.0), False, (H, W)), units=np.arange(U), maps=maps,
                        trf_areas=np.full(U, 576.0), topk_images=np.zeros((U, 1), int),
                        topk_locations=np.zeros((U, 1, 2), int), topk_values=np.ones((U, 1)))


def test_a_far_lobe_reads_as_wider_though_the_peak_does_not_move():
    fcn, parsenet = _units_result(0.0, 0), _units_result(0.45, 1)
    c = compare_reach(fcn, parsenet)
    assert c["verdict"] == "wider" and c["over"] == "units"
    assert c["ratio"] == parsenet.summary["reach"]["mass_side@0.9"] / fcn.summary["reach"]["mass_side@0.9"] > 2
    assert 1 < c["ratio_ci"][0] <= c["ratio"] <= c["ratio_ci"][1]
    assert c["far_diff"] > 0.2 and c["far_ci"][0] > 0
    assert parsenet.layer_stats["side"] == fcn.layer_stats["side"]  # the half-max side sees only the peak
    sentences = answer_sentences({("FCN", "fc7", "occlusion"): fcn, ("ParseNet", "fc7", "occlusion"): parsenet},
                                 "FCN", "ParseNet")
    assert sentences[0].startswith("With global context (ParseNet against FCN), measured by the far-field share")
    assert "(6 px) from the unit" in sentences[0]  # a quarter of the 24 px image side
    flo, fhi = c["far_ci"]
    want = (f"fc7 (occlusion): wider, {c['far_with']:.2f} against {c['far_without']:.2f} ({c['far_diff']:+.2f} "
            f"[{flo:+.2f}, {fhi:+.2f}]); 90%-mass side {c['with']:.0f} against {c['without']:.0f} px "
            f"({c['ratio']:.2f}x [{c['ratio_ci'][0]:.2f}, {c['ratio_ci'][1]:.2f}])")
    assert sentences[1].startswith(want)
    side = fcn.layer_stats["side"]
    assert sentences[1].endswith(f"peak (half-max) side {side:.0f} against {side:.0f} px.")


def test_the_same_maps_read_as_the_same_and_the_reverse_as_narrower():
    a, b = _units_result(0.3, 2), _units_result(0.3, 3)
    assert compare_reach(a, b)["verdict"] == "the same"
    assert compare_reach(_units_result(0.45, 1), _units_result(0.0, 0))["verdict"] == "narrower"


def test_without_resampling_the_point_ratio_decides_and_no_interval_is_printed():
    one_a, one_b = _units_result(0.0, 0, U=1), _units_result(0.45, 1, U=1)
    c = compare_reach(one_a, one_b)
    assert c["verdict"] == "wider" and np.isnan(c["far_ci"][0])  # one unit: resampling it says nothing
    text = answer_sentences({("A", "l", "occlusion"): one_a, ("B", "l", "occlusion"): one_b}, "A", "B")[1]
    assert "(no interval: a single map)" in text


def test_report_puts_the_answer_first_then_links_and_labels_the_peak():
    summaries = {m: {"best": {"metrics": {k: 0.5 for k in ("pixel_acc", "mean_acc", "mean_iou", "fw_iou")}
                              | {"per_class_iou": [0.5]}, "step": 3}, "classes": ["sky"]} for m in ("FCN", "ParseNet")}
    r = _units_result(0.45, 1)
    row = {**r.table_row(), "model": "ParseNet", "layer": "fc7", "method": "occlusion", "reach": r.summary["reach"]}
    md = report_markdown(summaries=summaries, erf_table=[row], figures={}, answer=["Answer one.", "Two."],
                         links={"result browser": "browse/index.html"})
    lines = md.splitlines()
    assert lines[2] == "Answer one. Two." and lines[4] == "Open: [result browser](browse/index.html)"
    assert md.index("Answer one.") < md.index("## The question")
    header, rows = erf_rows([row])
    assert "peak side, half-max (px)" in header
    ci = r.summary["reach"]["ci"]["mass_side@0.9"]
    assert rows[0][header.index("90% mass (px) [CI]")] == f"{r.summary['reach']['mass_side@0.9']:.0f} [{ci[0]:.0f}, {ci[1]:.0f}]"
