import errno
import json
import math

import pytest
import torch

import parsenet.trainer as trainer_mod
from parsenet.checkpoint import load_checkpoint, load_trained_model
from parsenet.config import ParseNetConfig
from parsenet.data import build_dataset
from parsenet.presets import PRESETS, merge_options, preset
from parsenet.trainer import TrainConfig, _ResumableSampler, _segmentation_loss, evaluate, train

TINY_DATA = {"size": 32, "num_images": 6}
TINY_MODEL = ParseNetConfig(width=1 / 16, batch_norm=True, context="global")


def tiny(out, **kw) -> TrainConfig:
    args = dict(dataset="scenes", dataset_options=TINY_DATA, model=TINY_MODEL, steps=4, batch_size=2,
                eval_every=2, eval_batch_size=3, scale_range=(1.0, 1.0), lr=0.01, out=str(out), progress=False,
                log_every=1)
    args.update(kw)
    return TrainConfig(**args)


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_folder_contents(tmp_path):
    summary = train(tiny(tmp_path / "run"))
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} == {"last.pt", "best.pt", "log.jsonl", "summary.json"}
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["type"] == "eval"] == [2, 4]
    assert [r["step"] for r in lines if r["type"] == "train"] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in lines if r["type"] == "train")
    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk["finished"] and on_disk["last"]["step"] == 4 and summary["last"] == on_disk["last"]
    assert on_disk["best"]["metrics"]["mean_iou"] >= max(
        r["metrics"]["mean_iou"] for r in lines if r["type"] == "eval") - 1e-12
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 4 and last["model_config"]["num_classes"] == 11  # taken from the dataset
    assert last["train_config"]["steps"] == 4 and len(last["classes"]) == 11 and len(last["colors"]) == 11
    assert load_checkpoint(run / "best.pt")["step"] == on_disk["best"]["step"]


def test_logged_metrics_match_a_fresh_evaluation_and_batching_does_not_matter(tmp_path):
    summary = train(tiny(tmp_path / "run", steps=2))
    model = load_trained_model(tmp_path / "run" / "last.pt").model
    val = build_dataset("scenes", "val", train=False, **TINY_DATA)
    one = evaluate(model, val, batch_size=1)
    many = evaluate(model, val, batch_size=4)
    assert one.to_dict() == many.to_dict()
    assert one.to_dict() == summary["last"]["metrics"]
    assert one.pixels == 6 * 32 * 32


def test_poly_schedule_and_head_learning_rate(tmp_path):
    train(tiny(tmp_path / "run", steps=2, eval_every=2, lr=0.02, head_lr_mult=10.0))
    lines = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in lines if r["type"] == "train"]
    assert lrs == pytest.approx([0.02, 0.02 * (1 - 1 / 2) ** 0.9])
    opt = load_checkpoint(tmp_path / "run" / "last.pt")["optimizer"]
    initial = {g["name"]: g["initial_lr"] for g in opt["param_groups"]}
    assert initial["backbone"] == pytest.approx(0.02) and initial["head"] == pytest.approx(0.2)
    decay = {g["name"]: g["weight_decay"] for g in opt["param_groups"]}
    assert decay["backbone"] == 5e-4 and decay["backbone/no_decay"] == 0.0


def test_resume_after_interruption_gives_identical_weights(tmp_path, monkeypatch):
    train(tiny(tmp_path / "full"))
    real_evaluate = trainer_mod.evaluate
    calls = []

    def crash_on_second_evaluation(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after last.pt of step 2 was written
        return real_evaluate(*args, **kw)

    monkeypatch.setattr(trainer_mod, "evaluate", crash_on_second_evaluation)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path / "cut"))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 2
    train(tiny(tmp_path / "cut", resume=True))
    assert_same_weights(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    full_log = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    cut_log = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "images_per_second"} for x in lines]
    assert strip(cut_log) == strip(full_log)


def test_accumulation_with_dropout_and_a_seed_is_reproducible(tmp_path):
    cfg = dict(steps=2, eval_every=2, batch_size=1, accumulate=2)
    train(tiny(tmp_path / "a", **cfg))
    train(tiny(tmp_path / "b", **cfg))
    assert_same_weights(weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt"))
    train(tiny(tmp_path / "c", seed=1, **cfg))
    assert not torch.equal(weights(tmp_path / "a" / "last.pt")["fc7_score.weight"],
                           weights(tmp_path / "c" / "last.pt")["fc7_score.weight"])


@pytest.mark.slow
def test_worker_count_does_not_change_the_result(tmp_path):
    train(tiny(tmp_path / "w0", steps=2, eval_every=2, workers=0))
    train(tiny(tmp_path / "w2", steps=2, eval_every=2, workers=2))
    assert_same_weights(weights(tmp_path / "w0" / "last.pt"), weights(tmp_path / "w2" / "last.pt"))


def test_pretrained_backbone_is_loaded_before_training_and_not_on_resume(tmp_path, monkeypatch):
    import parsenet.pretrained

    calls = []

    def fake_load(model, weights, *, progress=True):
        calls.append(weights)
        return model

    monkeypatch.setattr(parsenet.pretrained, "load_vgg16_backbone", fake_load)
    train(tiny(tmp_path / "run", steps=1, eval_every=1, pretrained="vgg16.pth"))
    assert calls == ["vgg16.pth"]
    train(tiny(tmp_path / "run", steps=1, eval_every=1, pretrained="vgg16.pth", resume=True))
    assert calls == ["vgg16.pth"]


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    saves = []

    def fill_disk(obj, f, *a, **kw):
        saves.append(obj["step"])
        if obj["step"] == 4:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", fill_disk)
    with pytest.raises(OSError) as info:
        train(tiny(tmp_path / "run"))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["best.pt", "last.pt", "log.jsonl", "summary.json"]


def test_resume_with_another_model_config_is_refused(tmp_path):
    train(tiny(tmp_path / "run", steps=2))
    fcn = ParseNetConfig(width=1 / 16, batch_norm=True, context="none")
    with pytest.raises(ValueError, match="another model config .*context: 'global' in the checkpoint, 'none' now"):
        train(tiny(tmp_path / "run", steps=2, model=fcn, resume=True))


def test_resume_with_other_settings_is_refused(tmp_path):
    train(tiny(tmp_path / "run", steps=2))
    with pytest.raises(ValueError, match="other settings .*lr: 0.01 in the checkpoint, 0.5 now"):
        train(tiny(tmp_path / "run", steps=2, lr=0.5, resume=True))


def test_resume_without_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume in .*no last.pt"):
        train(tiny(tmp_path / "empty", resume=True))


def test_existing_run_folder_is_not_overwritten(tmp_path):
    train(tiny(tmp_path / "run", steps=2))
    with pytest.raises(FileExistsError, match="already holds a run .*--resume"):
        train(tiny(tmp_path / "run", steps=2))


def test_sampler_resumes_mid_stream_and_ranks_are_disjoint():
    def take(it, n):
        return [next(it) for _ in range(n)]

    whole = take(iter(_ResumableSampler(5, seed=3, rank=0, world=1, start=0)), 13)
    assert take(iter(_ResumableSampler(5, seed=3, rank=0, world=1, start=7)), 6) == whole[7:]
    assert sorted(i for e, i in whole[:5]) == list(range(5)) and [e for e, _ in whole[:10]] == [0] * 5 + [1] * 5
    assert [i for _, i in whole[:5]] != [i for _, i in whole[5:10]]  # reshuffled each epoch
    r0 = take(iter(_ResumableSampler(6, seed=3, rank=0, world=2, start=0)), 3)
    r1 = take(iter(_ResumableSampler(6, seed=3, rank=1, world=2, start=0)), 3)
    assert sorted(i for _, i in r0 + r1) == list(range(6))


def test_all_void_batch_gives_zero_loss_that_reaches_every_score():
    scores = torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = _segmentation_loss({"out": scores}, torch.full((2, 4, 4), 255), 255)
    loss.backward()
    assert loss.item() == 0.0 and scores.grad is not None and not scores.grad.any()


def test_branch_losses_are_added():
    torch.manual_seed(0)
    out, aux = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 2, 2)
    labels = torch.randint(0, 3, (1, 4, 4))
    up = torch.nn.functional.interpolate(aux, size=(4, 4), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(out, labels) + torch.nn.functional.cross_entropy(up, labels)
    assert _segmentation_loss({"out": out, "aux": {"fc7": aux}}, labels, 255).item() == pytest.approx(expected.item())


def test_config_round_trip():
    cfg = tiny("runs/x", crop_size=24, dataset_options={"size": 40})
    d = json.loads(json.dumps(cfg.to_dict()))
    assert TrainConfig.from_dict(d) == cfg


def test_every_preset_is_a_valid_config():
    for name in PRESETS:
        cfg = TrainConfig.from_dict(preset(name))
        assert cfg.momentum == 0.9 and cfg.weight_decay == 5e-4 and cfg.poly_power == 0.9 and cfg.head_lr_mult == 10
    assert TrainConfig.from_dict(preset("voc")).accumulate == 8
    assert TrainConfig.from_dict(preset("demo")).model.width == 0.125


def test_merge_options_merges_nested_tables():
    merged = merge_options(preset("demo"), {"model": {"context": "none"}, "steps": 3})
    assert merged["model"]["context"] == "none" and merged["model"]["width"] == 0.125 and merged["steps"] == 3


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'dmeo' \\(did you mean: demo\\?\\)"):
        preset("dmeo")


def test_unknown_option_has_close_matches():
    with pytest.raises(ValueError, match="unknown training option 'stpes' \\(did you mean: steps\\?\\)"):
        TrainConfig.from_dict({"stpes": 3})


@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be a positive integer, got 0"),
    ("batch_size", 1.5, "batch_size must be a positive integer, got 1.5"),
    ("accumulate", 0, "accumulate must be a positive integer"),
    ("eval_every", -1, "eval_every must be a positive integer"),
    ("workers", -1, "workers must be an integer >= 0, got -1"),
    ("crop_size", 0, "crop_size must be a positive integer or None"),
    ("lr", 0.0, "lr must be > 0, got 0.0"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\), got 1.0"),
    ("weight_decay", -1e-4, "weight_decay must be >= 0"),
    ("poly_power", -1, "poly_power must be >= 0"),
    ("head_lr_mult", 0, "head_lr_mult must be > 0"),
    ("scale_range", (2.0, 1.0), "must satisfy 0 < low <= high"),
    ("scale_range", "big", "must be two numbers"),
    ("device", "tpu", "unknown device 'tpu'|unsupported device 'tpu'"),
])
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_model_must_be_a_config():
    with pytest.raises(TypeError, match="model must be a ParseNetConfig or a dict of its fields, got int"):
        TrainConfig(model=3)


def test_empty_dataset_split(tmp_path, monkeypatch):
    import parsenet.data as data

    real = data.build_dataset  # train() looks it up in parsenet.data when it runs

    def empty_val(spec, split, **kw):
        ds = real(spec, split, **kw)
        if split == "val":
            ds.num_images = 0
        return ds

    monkeypatch.setattr(data, "build_dataset", empty_val)
    with pytest.raises(ValueError, match="split 'val' of dataset 'scenes' is empty"):
        train(tiny(tmp_path / "run"))
