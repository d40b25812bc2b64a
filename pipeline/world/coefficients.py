"""Identity and style coefficients of the procedural face world, and their priors.

A face is fully described by two flat dicts of named floats:

* **identity** coefficients: head/jaw/chin/cheek geometry, eye/brow/nose/mouth/ear
  geometry, skin/lip/iris/hair albedo, hair style and volume, beard, moles, base
  age. They are drawn once per virtual person from the prior of its demographic
  group and never change between that person's images.
* **style** coefficients: pose, expression, age at capture, illumination,
  background and clothing, occluders and image degradations, drawn per image.

Values are rounded to 6 decimals when drawn so that the JSON metadata written
next to each image holds *exactly* the numbers the renderer used: re-rendering
from a sample's metadata reproduces it bit for bit.

Randomness: every identity and every image has its own ``numpy`` generator keyed
by ``SeedSequence(seed, spawn_key=(stream, identity, slot))``. Outputs therefore
never depend on batch size, worker count or resume point. ``stream`` separates
the train identities (stream 0) from evaluation identities (stream 1); because
the streams are different keys of the same seed, no evaluation identity can
coincide with a training identity (see docs/world.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.world.groups import GROUPS, NUM_GROUPS

STREAMS = {"train": 0, "eval": 1}

# Gaussian identity coefficients: name -> (mean, std, lo, hi), head-frame units
# (head half-width ~0.75). Group shifts (groups.py) move the means.
IDENTITY_NORMAL: dict[str, tuple[float, float, float, float]] = {
    "head_w": (0.75, 0.035, 0.64, 0.86),
    "head_h": (0.95, 0.035, 0.84, 1.06),
    "head_d": (0.82, 0.03, 0.72, 0.92),
    "jaw_w": (0.56, 0.05, 0.40, 0.72),
    "jaw_len": (0.62, 0.045, 0.50, 0.75),
    "chin": (0.5, 0.25, 0.0, 1.0),
    "cheek": (0.5, 0.25, 0.0, 1.0),
    "forehead": (0.52, 0.06, 0.38, 0.68),
    "eye_y": (0.08, 0.03, 0.0, 0.16),
    "eye_sep": (0.29, 0.022, 0.23, 0.35),
    "eye_w": (0.125, 0.012, 0.095, 0.155),
    "eye_h": (0.056, 0.007, 0.038, 0.074),
    "eye_tilt": (0.0, 0.1, -0.25, 0.25),
    "brow_gap": (0.14, 0.02, 0.09, 0.19),
    "brow_thick": (0.04, 0.009, 0.02, 0.062),
    "brow_arch": (0.025, 0.012, -0.005, 0.055),
    "nose_len": (0.31, 0.035, 0.22, 0.40),
    "nose_w": (0.15, 0.02, 0.1, 0.21),
    "nose_prot": (0.17, 0.035, 0.09, 0.26),
    "mouth_gap": (0.19, 0.025, 0.13, 0.25),
    "mouth_w": (0.21, 0.025, 0.15, 0.28),
    "lip_up": (0.034, 0.007, 0.018, 0.052),
    "lip_lo": (0.045, 0.008, 0.025, 0.068),
    "ear_size": (0.2, 0.025, 0.14, 0.26),
    "ear_y": (0.0, 0.04, -0.1, 0.1),
    "skin_l": (0.0, 0.06, -0.15, 0.15),  # lightness offset around the group tone
    "skin_red": (0.0, 0.04, -0.1, 0.1),
    "skin_yellow": (0.0, 0.04, -0.1, 0.1),
    "lip_red": (0.5, 0.15, 0.1, 0.9),
    "hair_red": (0.2, 0.15, 0.0, 0.8),
    "hair_vol": (0.0, 1.0, -2.5, 2.5),  # standardised; mapped per style in the renderer
    "fringe": (0.0, 1.0, -2.5, 2.5),
    "part": (0.0, 0.5, -1.0, 1.0),
    "base_age": (38.0, 12.0, 18.0, 70.0),
    "grey_onset": (50.0, 8.0, 32.0, 70.0),
}
# Identity coefficients drawn otherwise (uniform, categorical, group-dependent).
IDENTITY_OTHER = (
    "group",
    "hair_style",
    "hair_dark",
    "iris",
    "brow_dark",
    "beard",
    *(f"mole{k}_{c}" for k in range(3) for c in ("x", "y", "s")),
)
IDENTITY_FIELDS: tuple[str, ...] = (*IDENTITY_NORMAL, *IDENTITY_OTHER)

HAIR_STYLES = ("short", "medium", "long", "receding", "volume")

STYLE_FIELDS: tuple[str, ...] = (
    "yaw",
    "pitch",
    "roll",
    "age",
    "smile",
    "mouth_open",
    "brow_raise",
    "blink",
    "gaze_x",
    "gaze_y",
    "light_az",
    "light_el",
    "light_int",
    "light_warm",
    "ambient",
    "ambient_tint",
    "bg_r1",
    "bg_g1",
    "bg_b1",
    "bg_r2",
    "bg_g2",
    "bg_b2",
    "bg_angle",
    "bg_blob_x",
    "bg_blob_y",
    "bg_blob_s",
    "cloth_r",
    "cloth_g",
    "cloth_b",
    "glasses",  # 0 none, 1 clear frames, 2 sunglasses
    "glasses_tone",
    "mask",  # 0 none, 1 face mask
    "mask_tone",
    "scale",
    "shift_x",
    "shift_y",
    "blur",  # gaussian sigma in pixels at 112x112 (scaled with size)
    "noise",  # gaussian noise std (0..1 intensity units)
    "jpeg",  # JPEG quality applied as a degradation, 0 = none
)

OCCLUDERS = ("none", "glasses", "sunglasses", "mask")


@dataclass(frozen=True)
class StyleConditions:
    """Constraints on the style prior, used by the verification protocols.

    ``None`` leaves a factor to the default prior. ``yaw_abs`` is a (min, max)
    range of |yaw| in degrees with a random sign; ``age`` fixes the capture age;
    ``occluder`` forces one of :data:`OCCLUDERS`.
    """

    yaw_abs: tuple[float, float] | None = None
    age: float | None = None
    occluder: str | None = None

    def __post_init__(self) -> None:
        if self.yaw_abs is not None and not 0 <= self.yaw_abs[0] <= self.yaw_abs[1] <= 90:
            raise InputError(f"yaw_abs {self.yaw_abs!r}: need 0 <= min <= max <= 90 degrees")
        if self.occluder is not None and self.occluder not in OCCLUDERS:
            raise InputError(f"occluder {self.occluder!r}: must be one of {', '.join(OCCLUDERS)}")


def _rng(seed: int, stream: int, identity: int, slot: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence(int(seed), spawn_key=(stream, int(identity), slot))
    )


def stream_of(split: str) -> int:
    if split not in STREAMS:
        raise InputError(f"split {split!r}: must be one of {', '.join(STREAMS)}")
    return STREAMS[split]


def group_of(identity: int) -> int:
    """Groups are assigned round-robin, so every prefix of identities is balanced."""
    return int(identity) % NUM_GROUPS


def _r(x: float) -> float:
    return round(float(x), 6)


def sample_identity(seed: int, identity: int, split: str = "train") -> dict[str, float]:
    """Identity coefficients of virtual person ``identity`` of ``split``."""
    rng = _rng(seed, stream_of(split), identity, 0)
    g = GROUPS[group_of(identity)]
    z = rng.standard_normal(len(IDENTITY_NORMAL))
    u = rng.random(16)
    out: dict[str, float] = {}
    for (name, (mean, std, lo, hi)), zi in zip(IDENTITY_NORMAL.items(), z):
        out[name] = _r(min(max(mean + g.shifts.get(name, 0.0) + std * zi, lo), hi))
    odds = np.asarray(g.hair_style_odds, dtype=np.float64)
    cum = np.cumsum(odds / odds.sum())
    out["group"] = float(g.index)
    out["hair_style"] = float(min(int(np.searchsorted(cum, u[0], side="right")), len(odds) - 1))
    out["hair_dark"] = _r(min(max(g.hair_dark + 0.25 * (u[1] - 0.5) * 2, 0.0), 1.0))
    out["iris"] = _r(min(max(g.iris_light + 0.3 * (u[2] - 0.5) * 2, 0.0), 1.0))
    out["brow_dark"] = _r(0.4 + 0.5 * u[3])
    out["beard"] = _r(0.35 + 0.65 * u[5] if u[4] < g.beard_prob else 0.0)
    for k in range(3):
        present = u[6 + k] < 0.45
        out[f"mole{k}_x"] = _r((u[9 + k] - 0.5) * 0.9)
        out[f"mole{k}_y"] = _r(-0.65 + 0.85 * u[12 + k])
        out[f"mole{k}_s"] = _r(0.012 + 0.012 * u[15 - k] if present else 0.0)
    return out


def sample_style(
    seed: int,
    identity: int,
    index: int,
    identity_coeffs: Mapping[str, float],
    split: str = "train",
    conditions: StyleConditions | None = None,
) -> dict[str, float]:
    """Style coefficients of image ``index`` of ``identity``.

    The default prior is deliberately wide (|yaw| up to 60 degrees, strong
    coloured lighting, busy backgrounds, occluders, blur/noise/JPEG) so that raw
    pixels verify poorly while the identity coefficients stay recoverable.
    """
    c = conditions or StyleConditions()
    rng = _rng(seed, stream_of(split), identity, 1 + int(index))
    n = rng.standard_normal(8)
    u = rng.random(40)
    s: dict[str, float] = {}
    if c.yaw_abs is not None:
        lo, hi = c.yaw_abs
        s["yaw"] = (lo + (hi - lo) * u[0]) * (1.0 if u[1] < 0.5 else -1.0)
    else:
        s["yaw"] = min(max(n[0] * 28.0, -60.0), 60.0)
    s["pitch"] = min(max(n[1] * 9.0, -22.0), 22.0)
    s["roll"] = min(max(n[2] * 6.0, -15.0), 15.0)
    base_age = identity_coeffs["base_age"]
    s["age"] = c.age if c.age is not None else min(max(base_age + n[3] * 4.0, 16.0), 85.0)
    s["smile"] = u[2] ** 1.5
    s["mouth_open"] = max(0.0, u[3] * 1.4 - 0.6)
    s["brow_raise"] = (u[4] - 0.4) * 1.2
    s["blink"] = max(0.0, u[5] * 2.0 - 1.6) * 2.5
    s["gaze_x"] = (u[6] - 0.5) * 2.0
    s["gaze_y"] = (u[7] - 0.5) * 1.2
    s["light_az"] = (u[8] - 0.5) * 150.0
    s["light_el"] = -15.0 + 70.0 * u[9]
    s["light_int"] = 0.45 + 0.6 * u[10]
    s["light_warm"] = (u[11] - 0.5) * 2.0
    s["ambient"] = 0.25 + 0.35 * u[12]
    s["ambient_tint"] = (u[13] - 0.5) * 2.0
    for i, ch in enumerate(("r1", "g1", "b1", "r2", "g2", "b2")):
        s[f"bg_{ch}"] = u[14 + i]
    s["bg_angle"] = u[20] * 2 * math.pi
    s["bg_blob_x"] = (u[21] - 0.5) * 2.0
    s["bg_blob_y"] = (u[22] - 0.5) * 2.0
    s["bg_blob_s"] = 0.2 + 0.6 * u[23]
    s["cloth_r"], s["cloth_g"], s["cloth_b"] = u[24], u[25], u[26]
    occ = c.occluder
    if occ is None:
        occ = "none"
        if u[27] < 0.12:
            occ = "glasses"
        elif u[27] < 0.17:
            occ = "sunglasses"
        elif u[27] < 0.22:
            occ = "mask"
    s["glasses"] = {"none": 0, "glasses": 1, "sunglasses": 2, "mask": 0}[occ]
    s["glasses_tone"] = u[28]
    s["mask"] = 1.0 if occ == "mask" else 0.0
    s["mask_tone"] = u[29]
    s["scale"] = 1.0 + n[4] * 0.03
    s["shift_x"] = n[5] * 0.025
    s["shift_y"] = n[6] * 0.025
    s["blur"] = 0.0 if u[30] < 0.45 else 0.3 + 1.3 * u[31]
    s["noise"] = 0.0 if u[32] < 0.5 else 0.01 + 0.04 * u[33]
    s["jpeg"] = 0.0 if u[34] < 0.6 else float(int(30 + 60 * u[35]))
    return {k: _r(s[k]) for k in STYLE_FIELDS}


def stack(rows: Sequence[Mapping[str, float]], fields: Sequence[str]) -> dict[str, np.ndarray]:
    """List of coefficient dicts -> dict of float64 columns (the renderer's batch input)."""
    missing = [f for f in fields if rows and f not in rows[0]]
    if missing:
        raise InputError(f"coefficients missing field(s): {', '.join(missing)}")
    return {f: np.array([r[f] for r in rows], dtype=np.float64) for f in fields}
