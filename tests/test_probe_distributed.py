"""Probing sharded across processes (erf.distributed) and the bf16 probe.

The torchrun tests launch 2 CPU processes with the real launcher and compare
every array of the result with a single-process erf-probe run of the same command.
"""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torch import nn

from cli.probe import probe_command
from erf.distributed import check_shard, merge_disjoint, merge_topk, rank_state_path, shard_indices
from erf.occlusion import FullReinference, _TopK, probe_occlusion
from erf.result import ERFResult

ROOT = Path(__file__).resolve().parents[1]

TINY_NETS = """
import torch
from torch import nn

def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU())
"""


# --------------------------------------------------------------------------- sharding and merging, in process
def test_shard_indices_deal_round_robin_and_cover_every_image_once():
    assert shard_indices(5, 0, 2) == [0, 2, 4]
    assert shard_indices(5, 1, 2) == [1, 3]
    assert shard_indices(2, 2, 3) == []  # more processes than images: an empty shard
    assert sorted(sum((shard_indices(11, r, 4) for r in range(4)), [])) == list(range(11))


def test_shard_indices_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"rank=2 with world_size=2; expected 0 <= rank < 2"):
        shard_indices(5, 2, 2)


def test_check_shard_rejects_a_world_size_below_one():
    with pytest.raises(ValueError, match=r"world_size=0; expected integers with world_size >= 1"):
        check_shard(0, 0)


def test_check_shard_rejects_a_negative_rank():
    with pytest.raises(ValueError, match=r"rank=-1 with world_size=1"):
        check_shard(-1, 1)


def test_check_shard_needs_a_process_group_for_several_processes():
    with pytest.raises(ValueError, match="world_size=2 but no torch.distributed process group"):
        check_shard(0, 2)


def test_probe_occlusion_refuses_world_size_without_a_process_group():
    with pytest.raises(ValueError, match="no torch.distributed process group is initialised"):
        probe_occlusion(nn.Conv2d(3, 2, 3), "", torch.rand(2, 3, 8, 8), patch=3, top_k=1, rank=1, world_size=2)


def test_rank_state_path_keeps_the_single_process_name():
    assert rank_state_path("out/state.npz", 0, 1) == Path("out/state.npz")
    assert rank_state_path("out/state.npz", 3, 4) == Path("out/state.rank3of4.npz")


def test_merge_topk_hand_case_orders_by_value_then_image_rank():
    # Unit 0: values 5 (image 4), 7 (image 1) on one rank; 7 (image 0), -inf (empty) on the other.
    a = {"values": np.array([[7.0, 5.0]]), "ranks": np.array([[1, 4]]),
         "locations": np.array([[[0, 1], [2, 3]]]), "maps": np.array([[[[1.0]], [[2.0]]]])}
    b = {"values": np.array([[7.0, -np.inf]]), "ranks": np.array([[0, np.iinfo(np.int64).max]]),
         "locations": np.array([[[4, 5], [0, 0]]]), "maps": np.array([[[[3.0]], [[0.0]]]])}
    merged = merge_topk([a, b], 2)
    assert merged["values"].tolist() == [[7.0, 7.0]]
    assert merged["ranks"].tolist() == [[0, 1]]  # the tie goes to the image ranked first
    assert merged["locations"].tolist() == [[[4, 5], [0, 1]]]
    assert merged["maps"][:, :, 0, 0].tolist() == [[3.0, 1.0]]


@pytest.mark.parametrize("world", [2, 3, 7])
def test_merged_shards_equal_one_buffer_fed_every_image(world):
    # Values on a coarse grid so that ties between images are common.
    rng = np.random.default_rng(world)
    U, K, N = 5, 3, 7
    values = rng.integers(0, 3, size=(N, U)).astype(np.float64)  # (N, U)
    locations = rng.integers(0, 9, size=(N, U, 2))
    maps = rng.random((N, U, 2, 2)).astype(np.float32)
    order = rng.permutation(N)  # images arrive in any order; image n has rank n
    single = _TopK(U, K, (2, 2))
    for n in order:
        single.push(values[n], int(n), locations[n], maps[n])
    parts = []
    for r in range(world):
        part = _TopK(U, K, (2, 2))
        for n in shard_indices(N, r, world):
            part.push(values[n], n, locations[n], maps[n])
        parts.append(part.arrays())
    for merged in (merge_topk(parts, K), merge_topk(parts[::-1], K)):
        for key, want in single.arrays().items():
            np.testing.assert_array_equal(merged[key], want, err_msg=key)


def test_merge_disjoint_unites_per_image_maps():
    assert merge_disjoint([{"a": 1}, {"c": 3, "b": 2}]) == {"a": 1, "b": 2, "c": 3}


# --------------------------------------------------------------------------- bf16
def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU())


@pytest.mark.parametrize("engine", ["full", "incremental"])
def test_bf16_probe_stays_near_fp32_and_reports_its_drift(engine):
    images = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    kw = dict(patch=5, stride=3, top_k=2, engine=engine)
    ref = probe_occlusion(_tiny(), "3", images, **kw)
    low = probe_occlusion(_tiny(), "3", images, precision="bf16", **kw)
    assert "bf16_drift" not in ref.config and "precision" not in ref.config
    drift = low.config["bf16_drift"]
    assert low.config["precision"] == "bf16" and 0 < drift < 0.05  # bf16 keeps 8 mantissa bits: ~0.4% per op
    np.testing.assert_array_equal(low.topk_images, ref.topk_images)  # the selection stays fp32
    np.testing.assert_array_equal(low.topk_values, ref.topk_values)
    np.testing.assert_allclose(low.maps, ref.maps, atol=0.05)  # maps are normalised to max 1 per image


def test_full_reinference_in_channels_last_equals_the_default_layout():
    # The CUDA path runs the occluded batch in channels_last; the layout must not change the values.
    body, image = _tiny().eval(), torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    positions, patches = torch.tensor([[0, 0], [4, 7]]), torch.rand(2, 3, 5, 5)
    want = FullReinference(body, image)(positions, patches)  # (2, 4, 4, 4)
    got = FullReinference(body, image, memory_format=torch.channels_last)(positions, patches)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, FullReinference(body, image)(positions.flip(0), patches))  # positions matter


def test_unknown_precision_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown precision 'bf32'.*expected one of: fp32, bf16"):
        probe_occlusion(_tiny(), "3", torch.rand(2, 3, 12, 12), patch=3, top_k=1, precision="bf32")


# --------------------------------------------------------------------------- the command line, 1 and 2 processes
@pytest.fixture
def workspace(tmp_path, monkeypatch):
    (tmp_path / "tinynets_dist.py").write_text(TINY_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):  # odd: the ranks get 3 and 2 images
        Image.fromarray(rng.integers(0, 256, (18, 18, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    return tmp_path, images


def _args(images, out, extra):
    return ["tinynets_dist:tiny", "--layer", "1", "--layer", "3", "--images", str(images), "--patch", "5",
            "--stride", "2", "--batch-size", "7", "--no-progress", "--out", str(out), *extra]


def test_cli_bf16_prints_its_drift(workspace):
    tmp, images = workspace
    result = CliRunner().invoke(probe_command, _args(images, tmp / "out", ["--precision", "bf16", "--top-k", "2"]))
    assert result.exit_code == 0, result.output
    assert "occlusion 3: bf16 drift from fp32" in result.stderr
    assert ERFResult.load(tmp / "out" / "occlusion-3").config["precision"] == "bf16"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(a: ERFResult, b: ERFResult) -> None:
    assert a.images == b.images and a.mode == b.mode and a.config == b.config and a.model == b.model
    for key in ("units", "topk_images", "topk_locations"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    for key in ("maps", "layer_map", "topk_values", "image_maps"):
        x, y = getattr(a, key), getattr(b, key)
        assert (x is None) == (y is None), key
        if x is not None:  # float round-off only: the ranks sum the gradient maps in another order
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9, err_msg=key)
    for key in ("unit_stats", "layer_stats", "summary"):
        x, y = _leaves(getattr(a, key)), _leaves(getattr(b, key))
        assert x.keys() == y.keys(), key
        for leaf, value in x.items():
            assert y[leaf] == (pytest.approx(value, rel=1e-6, nan_ok=True) if isinstance(value, float) else value), \
                (key, leaf)


def _leaves(tree, prefix="") -> dict:
    """Flatten nested dicts and lists to {path: leaf}."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()}
    if isinstance(tree, (list, tuple)):
        return {k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}/{i}").items()}
    return {prefix: tree}


@pytest.mark.distributed
@pytest.mark.parametrize("extra", [
    ["--method", "both", "--units", "0,2,3", "--top-k", "3", "--noise-inputs", "3"],  # top-K units; position
    ["--method", "both", "--neuron", "1,center"],  # one neuron on every image, both methods
], ids=["units", "neuron"])
def test_torchrun_two_processes_equal_one(workspace, extra):
    tmp, images = workspace
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp)]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "cli.probe",
           *_args(images, tmp / "two", extra)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("results in") == 1  # only rank 0 reports

    single = CliRunner().invoke(probe_command, _args(images, tmp / "one", extra))
    assert single.exit_code == 0, single.output
    targets = sorted(p.name for p in (tmp / "one").iterdir())
    assert sorted(p.name for p in (tmp / "two").iterdir()) == targets
    for name in targets:
        if name == "table.json":
            continue
        # Only the result: the per-rank resume states are gone once the result is written.
        assert sorted(p.name for p in (tmp / "two" / name).iterdir()) == \
            sorted(p.name for p in (tmp / "one" / name).iterdir())
        _assert_same(ERFResult.load(tmp / "two" / name), ERFResult.load(tmp / "one" / name))
