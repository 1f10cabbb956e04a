"""Probe several layers by several methods into one output folder: what ``erf-probe`` runs.

For each (layer, method) the folder ``OUT/<method>-<layer>/`` (or where ``folder`` says) gets the
:class:`erf.result.ERFResult` (``result.npz``, ``summary.json``) and
``provenance.json``: what the result was made from, namely the model's
fingerprint (SHA-256 of its weights), the image set's fingerprint (names and
pixels) and every setting that changes the numbers. ``OUT/table.json`` is then
built from the results it lists.

:func:`run_probe` checks everything first (every layer, method and option, the
output folder) and writes nothing before that. With ``resume`` a finished
result is kept only when its provenance matches this run's; otherwise the run
is refused with the first difference. An interrupted occlusion probe continues
from its state file (``state.npz``, one per rank under torchrun), which the
probe itself checks against its settings.

Example:
    >>> lm = load_model("vgg16")
    >>> rows = run_probe(lm.model, load_images("photos/", resize=(224, 224)), ["features.29"],
    ...                  out="probes/vgg16", model_name=lm.name)  # doctest: +SKIP
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from erf.distributed import ProcessShard, rank_state_path
from erf.gradient import probe_gradient
from erf.graph import resolve_layer, truncate
from erf.images import ImageSet
from erf._probe import check_neuron as _check_neuron
from erf._probe import fingerprint_images as _fingerprint_images
from erf._probe import fingerprint_model as _fingerprint_model
from erf.occlusion import ENGINES, NOISE_KINDS, PRECISIONS, _check_geometry, probe_occlusion, select_units
from erf.replknet import format_area_ratios
from erf.result import ERFResult
from erf.rf import receptive_field
from erf.util import atomic_write, check_path, format_number, parse_device, unknown_name

__all__ = ["METHODS", "PROTOCOLS", "ProbeSettings", "run_probe", "check_probe_settings", "format_table", "provenance_difference"]

METHODS = ("occlusion", "gradient")
PROTOCOLS = ("luo", "replknet")  # of the gradient ERF
PROVENANCE = "provenance.json"
_PROVENANCE_VERSION = 1
# Settings that change a method's numbers; engine, batch size and device do not (results agree to round-off).
_NUMBER_SETTINGS = {
    "occlusion": ("patch", "stride", "noise", "top_k", "units", "neuron", "threshold", "seed", "precision"),
    "gradient": ("neuron", "noise_inputs", "threshold", "seed"),  # + protocol and its size for replknet
}


@dataclass(frozen=True)
class ProbeSettings:
    """The options of a probe run (see :func:`erf.occlusion.probe_occlusion` and :func:`erf.gradient.probe_gradient`).

    Args:
        patch, stride, noise: the occluder (Zhou et al. 2015: 11, 3, uniform).
        top_k: images per unit (occlusion, units mode); at most the number of images.
        units: ``"all"``, ``"0,5,9"`` or ``"N-random"`` (occlusion, units mode).
        neuron: None (every unit), ``(c, y, x)``, ``(c, "center")``, or ``"center"`` (gradient only: every
            channel at the centre position).
        noise_inputs: gradient: N(0, 1) images averaged over as well.
        threshold: ERF size threshold, a fraction of the max in [0, 1).
        seed: occluder noise, N-random units, noise inputs.
        precision: ``"fp32"`` or ``"bf16"`` (occlusion).
        protocol: gradient: ``"luo"`` (Luo et al. 2016) or ``"replknet"`` (Ding et al. 2022: ReLU'd centre,
            positive input gradient, images resized to ``protocol_size``, area ratios; :mod:`erf.replknet`).
        engine, batch_size, device: how the passes run; they do not change the numbers. ``batch_size="auto"``:
            the largest occlusion batch that fits the device's memory (the gradient then uses 16).
    """

    patch: int = 11
    stride: int = 3
    noise: str = "uniform"
    top_k: int = 10
    units: str = "all"
    neuron: tuple | str | None = None
    noise_inputs: int = 0
    threshold: float = 0.5
    seed: int = 0
    precision: str = "fp32"
    engine: str = "auto"
    protocol: str = "luo"
    protocol_size: int = 1024
    batch_size: int | str = 32
    device: str = "cpu"

    def identity(self, method: str) -> dict:
        """The settings that change ``method``'s numbers, as JSON values."""
        d = asdict(self)
        if method == "occlusion" and self.neuron is not None:  # one neuron on every image: no top-K, no units
            d["top_k"] = d["units"] = None
        keys = _NUMBER_SETTINGS[method]
        if method == "gradient" and self.protocol != "luo":  # the size means nothing to Luo's protocol
            keys += ("protocol", "protocol_size")
        return json.loads(json.dumps({k: d[k] for k in keys}))


def _check_settings(s: ProbeSettings, methods: Sequence[str], size: tuple[int, int]) -> None:
    for m in methods:
        if m not in METHODS:
            raise unknown_name("method", m, METHODS, show_all=True)
    for name in ("patch", "stride", "top_k", "noise_inputs", "seed", "protocol_size"):
        value = getattr(s, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r}; expected an integer")
    if s.batch_size != "auto" and (isinstance(s.batch_size, bool) or not isinstance(s.batch_size, int)
                                   or s.batch_size < 1):
        raise ValueError(f"batch_size={s.batch_size!r}; expected an integer >= 1 or 'auto'")
    if not isinstance(s.threshold, (int, float)) or not 0.0 <= s.threshold < 1.0:
        raise ValueError(f"threshold={s.threshold!r}; expected a fraction of the max in [0, 1)")
    if "gradient" in methods and s.noise_inputs < 0:
        raise ValueError(f"noise_inputs={s.noise_inputs}; expected an integer >= 0")
    if s.protocol not in PROTOCOLS:
        raise unknown_name("gradient protocol", s.protocol, PROTOCOLS, show_all=True)
    if s.protocol_size < 1:
        raise ValueError(f"protocol_size={s.protocol_size}; expected a side of at least 1 pixel")
    if "occlusion" in methods:
        _check_geometry(size, s.patch, s.stride)
        for name, value, valid in (("noise kind", s.noise, NOISE_KINDS), ("engine", s.engine, ENGINES),
                                   ("precision", s.precision, PRECISIONS)):
            if value not in valid:
                raise unknown_name(name, value, valid, show_all=True)
        if s.neuron == "center":
            raise ValueError("neuron 'center' names no channel for occlusion; expected (c, 'center') or (c, y, x)")


def check_probe_settings(settings: ProbeSettings, methods: Sequence[str], image_size: tuple[int, int],
                         n_images: int) -> None:
    """Check the options that do not need the model (everything but units and neuron against a layer's shape)
    for ``n_images`` images of ``image_size``: what a caller that probes later (after training) checks first."""
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"{n_images!r} images to probe; expected at least one")
    _check_settings(settings, methods, image_size)
    parse_device(settings.device)
    if "occlusion" in methods and settings.neuron is None and not 1 <= settings.top_k <= n_images:
        raise ValueError(f"top_k={settings.top_k} but there are {n_images} images; expected 1 <= top_k <= {n_images}")


def _check_layer(model: nn.Module, layer: str, images: ImageSet, s: ProbeSettings, device: torch.device):
    """Resolve ``layer`` and check the units or the neuron against its shape; returns (name, TRF)."""
    layer = resolve_layer(model, layer)
    with torch.inference_mode():
        act = truncate(model, layer)(images.images[:1].to(device))  # (1, C, h, w)
    if not torch.isfinite(act).all():
        raise ValueError(f"layer {layer!r} gives NaN or inf activations on image {images.names[0]!r}; expected "
                         "finite values (check the weights and the input normalisation)")
    _, C, h, w = act.shape
    rf = receptive_field(model, layer, images.size)
    if s.neuron is None:
        units = select_units(s.units, C, seed=s.seed)
        bad = [u for u in units if not 0 <= u < C]
        if bad or not units or len(set(units)) != len(units):
            raise ValueError(f"units {s.units!r} for layer {layer!r} with {C} channels; expected unique indices in "
                             f"0..{C - 1}")
    elif s.neuron != "center":
        _check_neuron(s.neuron, (C, h, w), layer, rf, images.size)
    return layer, rf


def provenance_difference(saved: dict, now: dict) -> str | None:
    """The first difference between two provenance records, in words; None when they match."""
    for key in ("method", "layer", "model", "images"):
        if saved.get(key) != now.get(key):
            what = {"model": "model weights (fingerprint)", "images": "image set (fingerprint)"}.get(key, key)
            return f"{what}: {_short(saved.get(key))} there, {_short(now.get(key))} now"
    theirs = saved.get("settings", {})
    for key in [*now["settings"], *(k for k in theirs if k not in now["settings"])]:  # a key on one side only too
        old, value = theirs.get(key), now["settings"].get(key)
        if old != value:
            return f"{key}: {old!r} there, {value!r} now"
    return None


def _short(v):
    return v[:12] if isinstance(v, str) and len(v) == 64 else repr(v)


def _keep_finished(target: Path, made_from: dict) -> ERFResult | None:
    """The finished result in ``target`` when it was made from ``made_from``; raise ValueError when from other things."""
    record = target / PROVENANCE
    saved = None
    if record.is_file():
        try:
            saved = json.loads(record.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{str(record)!r} is not valid JSON ({exc}); rerun with --overwrite") from None
    finished = (target / "summary.json").is_file()
    if saved is None:
        if finished:
            raise ValueError(f"cannot resume {str(target)!r}: its result has no {PROVENANCE} saying what made it; "
                             "rerun with --overwrite")
        return None
    diff = provenance_difference(saved, made_from)
    if diff:
        raise ValueError(f"cannot resume {str(target)!r}: it was made from other inputs ({diff}); use the same "
                         "model, images and settings, or --overwrite")
    return ERFResult.load(target) if finished else None


def _check_out(out: Path, overwrite: bool, resume: bool) -> None:
    if overwrite and resume:
        raise ValueError("overwrite and resume exclude each other; pick one")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output folder {str(out)!r} is a file; expected a folder")
    has_files = out.is_dir() and any(out.iterdir())
    if resume and not has_files:
        raise FileNotFoundError(f"nothing to resume in {str(out)!r}: it is empty or missing (start without --resume)")
    if has_files and not (overwrite or resume):
        raise FileExistsError(f"output folder {str(out)!r} exists and is not empty; pass --overwrite to replace "
                              "its results or --resume to continue")


def _inside(out: Path, rel: str) -> Path:
    """``out / rel`` for a relative path that stays inside ``out`` (a result folder, never ``out`` itself)."""
    parts = Path(rel).parts
    if not parts or Path(rel).is_absolute() or ".." in parts:
        raise ValueError(f"result folder {rel!r}; expected a relative path inside the output folder, like "
                         "'occlusion-conv5_3'")
    return out / rel


def _first_missing(out: Path, target: Path) -> Path | None:
    """The outermost folder on the way from ``out`` to ``target`` that does not exist yet (None if all do)."""
    parts = target.relative_to(out).parts
    return next((out.joinpath(*parts[:i]) for i in range(1, len(parts) + 1) if not out.joinpath(*parts[:i]).exists()),
                None)


def run_probe(
    model: nn.Module,
    images: ImageSet,
    layers: Sequence[str],
    *,
    out: str | os.PathLike,
    methods: Sequence[str] = ("occlusion",),
    settings: ProbeSettings = ProbeSettings(),
    model_name: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = False,
    shard: ProcessShard | None = None,
    log: Callable[[str], None] = print,
    folder: Callable[..., str] = "{method}-{layer}".format,
    table: str | None = "table.json",
) -> list[dict]:
    """Probe every layer by every method into ``out``, resuming or refusing as the module docstring says.

    Args:
        model: the network (moved to ``settings.device``).
        images: the probe images (an :class:`erf.images.ImageSet`).
        layers: module paths or fx node names.
        out: the output folder.
        methods: ``"occlusion"`` and/or ``"gradient"``.
        settings: the probe options.
        model_name: the model's label in the results.
        overwrite: replace results already in ``out``; resume: keep finished ones and continue unfinished ones.
        progress: progress bars; shard: this process under torchrun (default a single process).
        log: where one-line notes go (kept results, bf16 drift, a TRF smaller than the patch).
        folder: ``folder(method=..., layer=...)`` is each result's folder inside ``out`` (default
            ``"<method>-<layer>"``; ``erf-demo`` uses ``"<layer>/<method>"``).
        table: the table's file name in ``out``; None writes no table.

    Returns:
        The table rows (also in ``out/<table>``), one per (layer, method); empty on ranks other than 0.

    Raises:
        ValueError, FileExistsError, FileNotFoundError: bad input, before anything is written.
    """
    shard = shard or ProcessShard()
    out = check_path(out, "output folder")
    if not layers:
        raise ValueError("no layers to probe; expected at least one")
    if not isinstance(images, ImageSet):
        raise ValueError(f"images of type {type(images).__name__}; expected an erf.images.ImageSet")
    _check_out(out, overwrite, resume)
    device = parse_device(settings.device)
    if shard.world > 1 and device.type == "cuda":
        device = torch.device("cuda", shard.local_rank)
        torch.cuda.set_device(device)
    _check_settings(settings, methods, images.size)
    if settings.protocol == "replknet" and "gradient" in methods and shard.world > 1:
        raise ValueError("the replknet protocol runs in one process; expected no torchrun (world size 1)")
    model = model.to(device).eval()
    checked = [_check_layer(model, layer, images, settings, device) for layer in layers]  # before any write
    if "occlusion" in methods and settings.neuron is None and not 1 <= settings.top_k <= len(images):
        raise ValueError(f"top_k={settings.top_k} but there are {len(images)} images; expected 1 <= top_k <= "
                         f"{len(images)}")
    base = {"version": _PROVENANCE_VERSION, "model": _fingerprint_model(model)[0],
            "images": _fingerprint_images(images.images, images.names)}
    plan = [(layer, rf, m, _inside(out, folder(method=m, layer=layer)), {**base, "method": m, "layer": layer,
                                                                         "settings": settings.identity(m)})
            for layer, rf in checked for m in methods]
    kept = {target: _keep_finished(target, made_from) for *_, target, made_from in plan} if resume else {}
    shard.barrier()  # every rank has checked the output folder before any rank writes to it

    # What a failure before the first result removes: ``out`` if new, else the folders this run creates in it.
    created = [out] if not out.exists() else sorted({p for *_, target, _ in plan if (p := _first_missing(out, target))})
    results = []
    try:
        for layer, rf, m, target, made_from in plan:
            if kept.get(target) is not None:
                log(f"{m} {layer}: already done in {target} from the same model, images and settings, kept")
                results.append(kept[target])
                continue
            if m == "occlusion" and min(rf.rf) < settings.patch:
                log(f"{m} {layer}: its TRF ({min(rf.rf):g} px) is smaller than the {settings.patch} px patch; the "
                    "occlusion ERF includes the patch, so ERF/TRF can exceed 1")
            results.append(_probe_one(model, layer, m, target, made_from, images, settings, device, model_name,
                                      overwrite, progress, shard, log))
    except Exception:
        if shard.main and not results:  # a failure before the first result leaves the folder as it was
            for new in created:
                shutil.rmtree(new, ignore_errors=True)
        raise
    if not shard.main:
        return []
    rows = [{**r.table_row(), "method": r.method, "mode": r.mode,
             **({"replknet": {**r.config["replknet"], "input_size": r.config.get("input_size")}}
                if "replknet" in r.config else {})} for r in results]
    if table is None:
        return rows
    with atomic_write(out / table, "w") as f:  # from the results it lists, never relabelled
        json.dump({"model": results[0].model.get("name"), "images": len(results[0].images), "rows": rows}, f,
                  indent=1)
    return rows


def _probe_one(model, layer, method, target: Path, made_from, images, s: ProbeSettings, device, model_name,
               overwrite, progress, shard, log) -> ERFResult | None:
    state = target / "state.npz"
    if shard.main:
        if overwrite:  # every rank's state, from any number of processes
            for old in [state, *target.glob("state.rank*of*.npz")]:
                old.unlink(missing_ok=True)
        with atomic_write(target / PROVENANCE, "w") as f:
            json.dump(made_from, f, indent=1)
    shard.barrier()
    if method == "occlusion":
        result = probe_occlusion(
            model, layer, images, patch=s.patch, stride=s.stride, noise=s.noise, seed=s.seed,
            top_k=min(s.top_k, len(images)) if s.neuron is not None else s.top_k, units=s.units, neuron=s.neuron,
            threshold=s.threshold, batch_size=s.batch_size, engine=s.engine, device=device, model_name=model_name,
            state_path=state, progress=progress and shard.main, precision=s.precision, rank=shard.rank,
            world_size=shard.world)
    else:
        center = s.neuron in (None, "center")
        result = probe_gradient(
            model, layer, images, position="center" if center else None, neuron=None if center else s.neuron,
            noise_inputs=s.noise_inputs, seed=s.seed, threshold=s.threshold,
            batch_size=16 if s.batch_size == "auto" else s.batch_size,
            device=device, model_name=model_name, rank=shard.rank, world_size=shard.world, protocol=s.protocol,
            **({"input_size": s.protocol_size} if s.protocol == "replknet" else {}))
    if shard.main:  # only rank 0 holds the merged result
        result.save(target)
        drift = result.config.get("bf16_drift")
        if drift is not None:
            log(f"{method} {layer}: bf16 drift from fp32 {drift:.2e} (max |change| difference over max |change|, "
                "first batch of the first image)")
    shard.barrier()  # the result is on disk before any rank drops its accumulators
    rank_state_path(state, shard.rank, shard.world).unlink(missing_ok=True)
    return result


def format_table(rows: list[dict]) -> str:
    """The printed table per (layer, method): TRF side, ERF side (half-max, mean ± std over units), ERF/TRF,
    ERF/image and the 90%-mass side of the layer map."""
    header = (f"{'layer':<18} {'method':<10} {'mode':<8} {'units':>5} {'TRF side':>9} {'ERF side':>15} "
              f"{'ERF/TRF':>8} {'ERF/image':>9} {'90% mass':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        side = f"{format_number(r['erf_side'], '.1f')} ± {format_number(r['erf_side_std'], '.1f')}"
        lines.append(f"{r['layer']:<18} {r['method']:<10} {r['mode']:<8} {r['units']:>5} "
                     f"{format_number(r['trf_side'], '.1f'):>9} {side:>15} {format_number(r['erf_over_trf'], '.3f'):>8} "
                     f"{format_number(r['erf_over_image'], '.4f'):>9} {format_number(r.get('mass90_side'), '.0f'):>8}")
    lines.append("sides in input pixels: TRF is the theoretical RF, ERF the side of the square of equal area to the "
                 "region above the threshold (the peak), mean ± std over units; ERF/image is that area over the image "
                 "area; 90% mass: side of the centred square holding 90% of the layer map's contribution (the reach)")
    for r in rows:  # RepLKNet's high-contribution area ratios (Ding et al. 2022, Table 2's protocol)
        if "replknet" in r:
            lines += ["", f"{r['layer']}: RepLKNet area ratios at {r['replknet'].get('input_size', '?')} px",
                      format_area_ratios(r["replknet"]["area_ratios"])]
    return "\n".join(lines)
