"""Style sources: where MorphFace's style parameters and their rendered maps come from.

MorphFace conditions on a 3D morphable model: per image a parameter vector (shape,
expression, pose, texture, lighting) and the maps the fitted face renders into (surface
normals, albedo, Lambertian shading). A :class:`StyleSource` answers three questions:

* ``sample_params(sample)``: the parameter vector of a training sample (what the style
  prior is fitted on);
* ``training_maps(samples, params)``: the maps of training samples (what the style
  encoder reads while training);
* ``render(params)``: the maps of *new* parameter rows (what sampling conditions on).

Two sources:

* ``world``: the procedural world is its own morphable model. Its "3DMM" is the subset
  of world coefficients a 3DMM would hold (geometry, skin texture, expression, pose and
  crop, lighting: :data:`WORLD_GROUPS`), read from each sample's metadata and rendered by
  the world renderer with everything else (hair, beard, occluders, background,
  degradations) fixed at neutral values, as a DECA rendering shows the face mesh only.
* ``external``: the user's own fitter (the paper uses DECA/FLAME). Parameters are read
  from one ``.npz`` per image, maps from one ``.npz`` per image (or rendered by the
  user's renderer function); nothing license-restricted ships with the project.

Maps are packed into 9 channels with :func:`pack_maps` (normal xyz, albedo, shading),
each scaled to about [-1, 1].
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from synthface.generators.morphface.config import ExternalStyleConfig
from synthface.pipeline.errors import ConfigError, InputError

MAP_CHANNELS = 9
MAP_NAMES = ("normal", "albedo", "shading")


def pack_maps(normal: np.ndarray, albedo: np.ndarray, shading: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) normal, albedo, shading -> (N, 9, H, W) float32 in about [-1, 1].

    Normals are unit vectors already; albedo in [0, 1] maps to [-1, 1]; shading is >= 0
    and rarely above 2 (a strong light plus ambient), so it is clipped to [0, 2] - 1.
    """
    parts = [
        np.asarray(normal, np.float32),
        np.asarray(albedo, np.float32) * 2 - 1,
        np.clip(np.asarray(shading, np.float32), 0, 2) - 1,
    ]
    return np.ascontiguousarray(np.concatenate(parts, axis=-1).transpose(0, 3, 1, 2))


class StyleSource(ABC):
    """Style parameters of training samples and maps of any parameters (module docstring)."""

    name: str
    param_names: list[str]
    groups: dict[str, slice]

    @property
    def dim(self) -> int:
        return len(self.param_names)

    @abstractmethod
    def sample_params(self, sample: Mapping[str, Any]) -> np.ndarray:
        """(P,) float64 parameters of one training sample; InputError when absent."""

    def training_maps(
        self, samples: Sequence[Mapping[str, Any]], params: np.ndarray, size: int
    ) -> np.ndarray:
        """(N, 9, size, size) maps of training samples (default: render their parameters)."""
        return self.render(params, size)

    @abstractmethod
    def render(self, params: np.ndarray, size: int) -> np.ndarray:
        """(N, P) parameters -> (N, 9, size, size) packed maps."""

    def project(self, params: np.ndarray) -> np.ndarray:
        """Map sampled rows onto valid parameters (e.g. round a categorical one)."""
        return params

    def check_params(self, params: np.ndarray, what: str = "style parameters") -> np.ndarray:
        arr = np.asarray(params, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise InputError(
                f"{what} must have shape (N, {self.dim}) for the {self.name!r} style source "
                f"(got {tuple(arr.shape)})"
            )
        if not np.isfinite(arr).all():
            raise InputError(f"{what} contain NaN or infinite values")
        return arr


# ----------------------------------------------------------------------------- world
# The world's "3DMM": coefficients a morphable model would hold, grouped like DECA's code.
WORLD_GROUPS: dict[str, tuple[str, ...]] = {
    "shape": (
        "head_w",
        "head_h",
        "head_d",
        "jaw_w",
        "jaw_len",
        "chin",
        "cheek",
        "forehead",
        "eye_y",
        "eye_sep",
        "eye_w",
        "eye_h",
        "eye_tilt",
        "brow_gap",
        "brow_arch",
        "nose_len",
        "nose_w",
        "nose_prot",
        "mouth_gap",
        "mouth_w",
        "lip_up",
        "lip_lo",
        "ear_size",
        "ear_y",
    ),
    # group picks the skin-tone family (rounded when sampled), the rest shift it
    "texture": ("group", "skin_l", "skin_red", "skin_yellow", "lip_red"),
    "expression": ("smile", "mouth_open", "brow_raise", "blink", "gaze_x", "gaze_y"),
    # head rotation plus the crop's scale and shift (DECA's pose + camera)
    "pose": ("yaw", "pitch", "roll", "scale", "shift_x", "shift_y"),
    "lighting": ("light_az", "light_el", "light_int", "light_warm", "ambient", "ambient_tint"),
}

# Values of the coefficients outside the "3DMM" when its maps are rendered.
_NEUTRAL_OTHER = {
    "hair_style": 0.0,  # short
    "hair_dark": 0.5,
    "hair_red": 0.2,
    "hair_vol": 0.0,
    "fringe": 0.0,
    "part": 0.0,
    "iris": 0.3,
    "brow_dark": 0.6,
    "brow_thick": 0.04,
    "beard": 0.0,
    "base_age": 38.0,
    "grey_onset": 70.0,
    "age": 30.0,  # below 30 the renderer adds no wrinkles
    "glasses": 0.0,
    "glasses_tone": 0.0,
    "mask": 0.0,
    "mask_tone": 0.0,
    "blur": 0.0,
    "noise": 0.0,
    "jpeg": 0.0,
}


class WorldStyleSource(StyleSource):
    """The procedural world's coefficients as a morphable model (module docstring)."""

    name = "world"

    def __init__(self) -> None:
        from synthface.pipeline.world.coefficients import (
            IDENTITY_FIELDS,
            IDENTITY_NORMAL,
            STYLE_FIELDS,
        )

        self.param_names = [n for fields in WORLD_GROUPS.values() for n in fields]
        self.groups, start = {}, 0
        for group, fields in WORLD_GROUPS.items():
            self.groups[group] = slice(start, start + len(fields))
            start += len(fields)
        self._identity_fields = IDENTITY_FIELDS
        self._style_fields = STYLE_FIELDS
        neutral = {k: v[0] for k, v in IDENTITY_NORMAL.items()}
        neutral.update(_NEUTRAL_OTHER)
        neutral.update({f"mole{k}_{c}": 0.0 for k in range(3) for c in ("x", "y", "s")})
        for ch in ("bg_r1", "bg_g1", "bg_b1", "bg_r2", "bg_g2", "bg_b2", "cloth_r"):
            neutral[ch] = 0.5
        neutral.update(
            cloth_g=0.5, cloth_b=0.5, bg_angle=0.0, bg_blob_x=0.0, bg_blob_y=0.0, bg_blob_s=0.3
        )
        missing = [f for f in (*IDENTITY_FIELDS, *STYLE_FIELDS) if f not in neutral]
        missing = [f for f in missing if f not in self.param_names]
        if missing:  # a world change added a coefficient this table does not know
            raise RuntimeError(f"world style source: no neutral value for {missing}")
        self._neutral = neutral
        self._index = {n: i for i, n in enumerate(self.param_names)}
        self._in_identity = set(IDENTITY_FIELDS)

    def sample_params(self, sample: Mapping[str, Any]) -> np.ndarray:
        meta = sample.get("meta") or {}
        idc, sty = meta.get("identity_coeffs"), meta.get("style_coeffs")
        if not isinstance(idc, dict) or not isinstance(sty, dict):
            raise InputError(
                f"sample {sample.get('__key__', '?')!r}: meta has no identity_coeffs/style_coeffs; "
                "the 'world' style source needs procedural-world shards (synthface world make)"
            )
        row = []
        for name in self.param_names:
            src = idc if name in self._in_identity else sty
            if name not in src:
                raise InputError(
                    f"sample {sample.get('__key__', '?')!r}: world coefficient {name!r} missing"
                )
            row.append(float(src[name]))
        return np.asarray(row, dtype=np.float64)

    def project(self, params: np.ndarray) -> np.ndarray:
        from synthface.pipeline.world.groups import NUM_GROUPS

        out = np.array(params, dtype=np.float64, copy=True)
        g = self._index["group"]
        out[..., g] = np.clip(np.rint(out[..., g]), 0, NUM_GROUPS - 1)
        return out

    def columns(self, params: np.ndarray) -> tuple[dict, dict]:
        """(N, P) rows -> the renderer's identity and style coefficient columns."""
        params = self.project(self.check_params(params))
        n = params.shape[0]

        def col(name: str) -> np.ndarray:
            if name in self._index:
                return params[:, self._index[name]]
            return np.full(n, self._neutral[name], dtype=np.float64)

        return (
            {f: col(f) for f in self._identity_fields},
            {f: col(f) for f in self._style_fields},
        )

    def render(self, params: np.ndarray, size: int) -> np.ndarray:
        from synthface.pipeline.world.render import MIN_SIZE, render

        if size < MIN_SIZE:
            raise ConfigError(
                f"morphface.map_size {size}: the world renderer needs at least {MIN_SIZE} px"
            )
        identity, style = self.columns(params)
        out = render(identity, style, size, degrade=False)
        return pack_maps(out.normal, out.albedo, out.shading)


# ----------------------------------------------------------------------------- external
def _safe_member(root: Path, key: str, what: str) -> Path:
    """``root/<key>.npz``, refusing keys that would leave ``root``."""
    path = (root / f"{key}.npz").resolve()
    if not path.is_relative_to(root.resolve()):
        raise InputError(f"{what}: sample key {key!r} points outside {root}")
    return path


def _load_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{what}: {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{what}: {path}: not a readable .npz ({exc})") from None


def _check_map(arr: np.ndarray, path: Path | str, name: str, n: int | None) -> np.ndarray:
    shape = tuple(arr.shape)
    lead = () if n is None else (n,)
    if len(shape) != len(lead) + 3 or shape[-1] != 3 or shape[: len(lead)] != lead:
        want = "(H, W, 3)" if n is None else f"({n}, H, W, 3)"
        raise InputError(f"{path}: map {name!r} must have shape {want} (got {shape})")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise InputError(f"{path}: map {name!r} must be finite numbers")
    return np.asarray(arr, dtype=np.float32)


def _resize_maps(maps: np.ndarray, size: int) -> np.ndarray:
    if maps.shape[-1] == size and maps.shape[-2] == size:
        return maps
    import torch
    import torch.nn.functional as F

    x = F.interpolate(torch.from_numpy(maps), size=(size, size), mode="bilinear", antialias=True)
    return x.numpy()


def load_renderer(spec: str) -> Callable:
    """``"package.module:function"`` -> the user's renderer (their fitter's own code)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"morphface.external.renderer {spec!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"morphface.external.renderer {spec!r}: cannot import ({exc})") from None
    if not callable(fn):
        raise ConfigError(f"morphface.external.renderer {spec!r}: not callable")
    return fn


class ExternalStyleSource(StyleSource):
    """Per-image 3DMM fits and maps from the user's fitter, read from files.

    Fit file ``<fits>/<key>.npz``: one array per layout group (DECA names by default:
    ``shape`` 100, ``exp`` 50, ``pose`` 6, ``cam`` 3, ``tex`` 50, ``light`` 9x3), any
    array shape with the right number of values; a wrong count is refused naming the
    file, array and expected size. Maps file ``<maps>/<key>.npz``: ``normal``, ``albedo``,
    ``shading`` as (H, W, 3) in the world renderer's conventions (unit camera-space
    normals, albedo in [0, 1], shading >= 0). The renderer, when given, is called as
    ``fn({group: (N, size) array}, size)`` and returns a dict of three (N, size, size, 3)
    maps.
    """

    name = "external"

    def __init__(self, cfg: ExternalStyleConfig, renderer: Callable | None = None) -> None:
        self.cfg = cfg
        self.layout = list(cfg.layout)
        self.param_names = [f"{g.name}_{i}" for g in self.layout for i in range(g.size)]
        self.groups, start = {}, 0
        for g in self.layout:
            self.groups[g.name] = slice(start, start + g.size)
            start += g.size
        self._renderer = renderer
        if self._renderer is None and cfg.renderer is not None:
            self._renderer = load_renderer(cfg.renderer)

    def read_fit(self, path: Path) -> np.ndarray:
        """(P,) parameters from one fit file, each group checked against the layout."""
        data = _load_npz(path, "morphface.external.fits")
        parts = []
        for g in self.layout:
            if g.key not in data:
                raise InputError(
                    f"{path}: no array {g.key!r} (morphface.external.layout group {g.name!r}; "
                    f"arrays in the file: {', '.join(sorted(data)) or 'none'})"
                )
            arr = data[g.key]
            if arr.size != g.size or not np.issubdtype(arr.dtype, np.number):
                raise InputError(
                    f"{path}: array {g.key!r} has shape {tuple(arr.shape)} ({arr.size} values), "
                    f"expected {g.size} numbers (morphface.external.layout group {g.name!r})"
                )
            parts.append(np.asarray(arr, dtype=np.float64).reshape(-1))
        row = np.concatenate(parts)
        if not np.isfinite(row).all():
            raise InputError(f"{path}: contains NaN or infinite values")
        return row

    def read_maps(self, path: Path) -> np.ndarray:
        """(9, H, W) packed maps from one maps file."""
        data = _load_npz(path, "morphface.external.maps")
        missing = [m for m in MAP_NAMES if m not in data]
        if missing:
            raise InputError(f"{path}: missing map(s) {', '.join(missing)}")
        maps = [_check_map(data[m], path, m, None) for m in MAP_NAMES]
        if len({m.shape for m in maps}) != 1:
            raise InputError(f"{path}: maps differ in shape ({[m.shape for m in maps]})")
        return pack_maps(*(m[None] for m in maps))[0]

    def _root(self, field: str) -> Path:
        value = getattr(self.cfg, field)
        if value is None:
            raise ConfigError(f"morphface.external.{field} is not set (style_source: external)")
        return Path(value)

    def sample_params(self, sample: Mapping[str, Any]) -> np.ndarray:
        key = str(sample.get("__key__", ""))
        root = self._root("fits")
        return self.read_fit(_safe_member(root, key, "morphface.external.fits"))

    def training_maps(
        self, samples: Sequence[Mapping[str, Any]], params: np.ndarray, size: int
    ) -> np.ndarray:
        if self.cfg.maps is None:
            return self.render(params, size)
        root = self._root("maps")
        out = []
        for s in samples:
            maps = self.read_maps(_safe_member(root, str(s.get("__key__", "")), "maps"))
            out.append(_resize_maps(maps[None], size)[0])
        return np.stack(out)

    def render(self, params: np.ndarray, size: int) -> np.ndarray:
        if self._renderer is None:
            raise ConfigError(
                "style_source 'external' cannot render new style parameters without the "
                "fitter's renderer: set morphface.external.renderer ('module:function'), or "
                "pass rendered maps (N, 9, H, W) as the style conditions"
            )
        params = self.check_params(params)
        n = params.shape[0]
        out = self._renderer({g: params[:, sl] for g, sl in self.groups.items()}, size)
        what = f"renderer {self.cfg.renderer or self._renderer!r}"
        if not isinstance(out, Mapping) or any(m not in out for m in MAP_NAMES):
            raise InputError(f"{what}: must return a dict with {', '.join(MAP_NAMES)}")
        maps = [_check_map(np.asarray(out[m]), what, m, n) for m in MAP_NAMES]
        return _resize_maps(pack_maps(*maps), size)


def make_style_source(cfg, renderer: Callable | None = None) -> StyleSource:
    """The style source a generator config names (``cfg.morphface.style_source``)."""
    m = cfg.morphface
    if m.style_source == "world":
        return WorldStyleSource()
    return ExternalStyleSource(m.external, renderer=renderer)
