"""Weights: the catalog of known checkpoints, the local cache, sha256 checks and loading.

A checkpoint is either a plain ``state_dict`` (as TinyCD publishes them) or a
changemap checkpoint ``{"state_dict": ..., "meta": {...}}`` that carries its own
metadata. Known weights (``levir``, ``whu`` for TinyCD) come with their metadata from
``weights/catalog.json``; they are copied (from the package, else downloaded from
their URL) into the cache directory and verified by sha256 before use.

Nothing here downloads by itself: a URL needs a ``fetch(url, path)`` function from the
caller (changemap's pipeline passes ``pipeline.io.fs.download``). Known names whose file is
packaged, local paths and ``file://`` URLs need none.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import torch

from models.errors import WeightsError
from models.registry import get_entry

_CATALOG_PATH = Path(__file__).with_name("weights") / "catalog.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Copies a URL's content to a local file path: ``fetch(url, path)``.
Fetch = Callable[[str, str], None]




@dataclass(frozen=True)
class WeightsMeta:
    """How to build a model for a checkpoint and how to prepare its input.

    Input values are ``(raw[bands] * scale - mean) / std`` per band; ``bands`` are
    1-based band numbers of the input rasters (None: the first ``in_channels``).
    """

    model: str
    model_args: Mapping[str, Any] = field(default_factory=dict)
    bands: tuple[int, ...] | None = None
    scale: float = 1 / 255
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    threshold: float = 0.5
    classes: tuple[str, ...] = ("no change", "change")
    license: str = "unknown"
    sha256: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise WeightsError(f"normalization mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise WeightsError(f"normalization std must be positive, got {self.std}")
        if not 0.0 < self.threshold < 1.0:
            raise WeightsError(f"threshold must lie in (0, 1), got {self.threshold}")

    @property
    def in_channels(self) -> int:
        """Number of input bands the model expects."""
        return int(self.model_args.get("in_channels", len(self.mean)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (saved in checkpoints and run configs)."""
        d = asdict(self)
        d["model_args"] = dict(self.model_args)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightsMeta:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise WeightsError(f"unknown weights metadata fields {sorted(unknown)}; known: {sorted(known)}")
        kw = dict(d)
        for key in ("bands", "mean", "std", "classes"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class LoadedWeights:
    """A state dict and the metadata that says how to use it."""

    meta: WeightsMeta
    state_dict: Mapping[str, torch.Tensor]


def cache_dir() -> Path:
    """Where downloaded and verified weights live (``CHANGEMAP_CACHE``, default ``~/.cache/changemap``)."""
    return Path(os.environ.get("CHANGEMAP_CACHE") or Path.home() / ".cache" / "changemap")


def catalog() -> dict[str, dict[str, dict[str, Any]]]:
    """The known weights: ``{model: {name: entry}}``."""
    return json.loads(_CATALOG_PATH.read_text())


def known_weight_names(model: str) -> list[str]:
    """Names of the known weights for ``model``."""
    return sorted(catalog().get(model, {}))


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_meta(model: str, model_args: Mapping[str, Any] | None = None) -> WeightsMeta:
    """Metadata for a model used without known weights (random init or a bare state dict).

    RGB models get ImageNet statistics; other band counts get identity statistics
    (values scaled by 1/255) until a trained checkpoint brings its own.
    """
    entry = get_entry(model)
    known = catalog().get(model, {})
    args = dict(model_args or {})
    if entry.default_weights and entry.default_weights in known and not args:
        return replace(_meta_from_catalog(known[entry.default_weights]), sha256="", source="", license="unknown")
    n = int(args.get("in_channels", 3))
    if n == 3:
        return WeightsMeta(model=model, model_args=args)
    return WeightsMeta(model=model, model_args=args, mean=(0.0,) * n, std=(1.0,) * n)


def _meta_from_catalog(entry: Mapping[str, Any]) -> WeightsMeta:
    fields = set(WeightsMeta.__dataclass_fields__)
    return WeightsMeta.from_dict({k: v for k, v in entry.items() if k in fields} | {"source": entry.get("url", "")})


def _fetch_into(url: str, path: str, fetch: Fetch | None) -> None:
    """Write the content of ``url`` to ``path`` with ``fetch``; a ``file://`` URL needs none."""
    if fetch is not None:
        fetch(url, path)
    elif urlparse(url).scheme == "file":
        shutil.copyfile(url2pathname(urlparse(url).path), path)
    else:
        raise WeightsError(
            f"weights {url} are a URL, but no download function was given: pass fetch=... (changemap's "
            "pipeline passes pipeline.io.fs.download), or download the file and pass its local path")


def _cached_known(model: str, name: str, entry: Mapping[str, Any], fetch: Fetch | None) -> Path:
    """Path of a verified copy of a known checkpoint in the cache, fetching it when missing."""
    target = cache_dir() / "weights" / model / f"{name}-{entry['sha256'][:12]}.pth"
    if target.exists():
        if sha256_of(target) == entry["sha256"]:
            return target
        target.unlink()  # a corrupt cache entry: fetch again below
    target.parent.mkdir(parents=True, exist_ok=True)
    packaged = _CATALOG_PATH.parent / entry["file"]
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        if packaged.exists():
            shutil.copyfile(packaged, tmp)
        else:
            _fetch_into(entry["url"], tmp, fetch)
        actual = sha256_of(tmp)
        if actual != entry["sha256"]:
            raise WeightsError(
                f"weights {model}/{name} failed verification: sha256 {actual} but expected {entry['sha256']} "
                f"(source {packaged if packaged.exists() else entry['url']}); the file is corrupt or not the "
                "published checkpoint; reinstall changemap or delete it and retry"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _fetch_url(url: str, fetch: Fetch | None) -> Path:
    """Download a checkpoint URL into the cache (once, through a temporary file) and return its local path."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / "weights" / "urls" / f"{key}-{Path(url.split('?')[0]).name or 'weights.pth'}"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    os.close(fd)
    try:
        _fetch_into(url, tmp, fetch)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Load a checkpoint safely (``weights_only=True``): its state dict and its metadata, if any."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise WeightsError(
            f"weights file {path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200]}); pass a .pth/.pt state dict or a changemap checkpoint"
        ) from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and "model" in meta:
            return dict(obj["state_dict"]), dict(meta)
        return map_foreign_keys(obj["state_dict"]), None  # mmsegmentation / open-cd checkpoint
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), None
    raise WeightsError(f"weights file {path} holds a {type(obj).__name__}, not a state dict of tensors")


def map_foreign_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map mmsegmentation / open-cd key names to ours.

    Our MiT, SegFormer head, ResNet and Changer modules use mmseg's / open-cd's sub-module
    names (``backbone.layers.{stage}.{0,1,2}``, ``attn.attn.in_proj_weight``,
    ``ffn.layers.{0,1,4}``, ``decode_head.convs.{i}.conv``/``.bn``, ``conv_seg``), so the map
    only removes wrappers: a ``module.`` prefix (DataParallel) and the ``data_preprocessor``
    and ``auxiliary_head`` entries, which hold no weights of the change model. Loading stays
    strict afterwards, and a mismatch lists the missing and unexpected keys.
    """
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key.startswith(("data_preprocessor.", "auxiliary_head.")):
            continue
        out[key] = value
    return out


def resolve_weights(model: str, spec: str | os.PathLike | None, *,
                    fetch: Fetch | None = None) -> LoadedWeights | None:
    """Turn ``--weights`` (known name, local path or URL) into a state dict with metadata.

    Args:
        model: The registered model the weights are for.
        spec: A known weights name, a local path or a URL; None means random initialisation.
        fetch: Downloads a URL (``fetch(url, path)``); needed for URLs other than ``file://``.

    Returns:
        The weights, or None when ``spec`` is None.
    """
    if spec is None:
        return None
    spec = str(spec)
    get_entry(model)  # unknown model: clear error first
    known = catalog().get(model, {})
    if spec in known:
        entry = known[spec]
        path = _cached_known(model, spec, entry, fetch)
        state, _ = read_checkpoint(path)
        for old, new in entry.get("rename", {}).items():
            state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
        return LoadedWeights(_meta_from_catalog(entry), state)
    if "://" in spec:
        path = _fetch_url(spec, fetch)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            names = ", ".join(sorted(known)) or "none"
            raise WeightsError(
                f"weights {spec!r} for model {model!r} are neither a known name (known: {names}), "
                "an existing file nor a URL; check the path or pick a known name"
            )
    state, meta = read_checkpoint(path)
    if meta:
        loaded_meta = WeightsMeta.from_dict(meta)
        if loaded_meta.model != model:
            raise WeightsError(
                f"weights file {spec} was trained for model {loaded_meta.model!r}, not {model!r}; "
                f"run with --model {loaded_meta.model}"
            )
    else:
        loaded_meta = default_meta(model)
    return LoadedWeights(replace(loaded_meta, sha256=sha256_of(path), source=str(spec)), state)


def checkpoint_model(spec: str | os.PathLike | None, *, fetch: Fetch | None = None) -> str | None:
    """The model a changemap checkpoint (local path or URL, downloaded with ``fetch``) was trained for.

    None for anything else (a known weights name, a foreign checkpoint, a missing file).
    """
    if spec is None:
        return None
    spec = str(spec)
    if "://" in spec:
        path = _fetch_url(spec, fetch)
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            return None  # a known weights name, or a missing file that resolve_weights reports
    _, meta = read_checkpoint(path)
    return str(meta["model"]) if meta else None


def load_into(model: torch.nn.Module, weights: LoadedWeights, name: str) -> None:
    """Load a state dict strictly, turning key/shape mismatches into one clear error."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in weights.state_dict]
    unexpected = [k for k in weights.state_dict if k not in own]
    shapes = [
        f"{k} {tuple(weights.state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items() if k in weights.state_dict and weights.state_dict[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {'; '.join(shapes[:3])})")
        raise WeightsError(
            f"weights {weights.meta.source or '(given)'} do not fit model {name!r}: {'; '.join(parts)}. "
            "Are these weights for another architecture or band count?"
        )
    model.load_state_dict(weights.state_dict, strict=True)


def adapt_input_channels(weights: LoadedWeights, model_state: Mapping[str, torch.Tensor],
                         in_channels: int) -> LoadedWeights:
    """Fit weights trained on ``meta.in_channels`` (e.g. RGB) bands to a model with ``in_channels`` bands.

    The rule (timm's ``adapt_input_conv``, generalised to every tensor that depends on the
    band count): along each axis where the checkpoint has the old band count and the model
    the new one, the old slices are repeated cyclically (band i takes the weights of old band
    i mod 3). Input-channel axes (axis 1 of a conv/linear weight) are then scaled by
    old / new so a layer's response to an input whose bands look alike stays the same.
    Normalisation statistics are repeated the same way. Tensors of any other shape must
    match exactly.
    """
    old = weights.meta.in_channels
    adapted = dict(weights.state_dict)
    for key, target in model_state.items():
        src = adapted.get(key)
        if src is None or src.shape == target.shape or src.ndim != target.ndim:
            continue
        axes = [i for i, (a, b) in enumerate(zip(src.shape, target.shape)) if a != b]
        if not all(src.shape[i] == old and target.shape[i] == in_channels for i in axes):
            continue  # left for load_into to report
        out = src
        for axis in axes:
            index = torch.arange(in_channels) % old
            out = out.index_select(axis, index)
            if axis == 1:
                out = out * (old / in_channels)
        adapted[key] = out.contiguous()
    cycle = [i % old for i in range(in_channels)]
    meta = replace(
        weights.meta, model_args={**weights.meta.model_args, "in_channels": in_channels}, bands=None,
        mean=tuple(weights.meta.mean[i] for i in cycle), std=tuple(weights.meta.std[i] for i in cycle),
    )
    return LoadedWeights(meta, adapted)


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, meta: WeightsMeta) -> None:
    """Write a changemap checkpoint (state dict + metadata) atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".part")
    torch.save({"state_dict": model.state_dict(), "meta": meta.to_dict()}, tmp)
    os.replace(tmp, path)
