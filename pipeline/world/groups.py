"""Demographic groups of the procedural world and their identity priors.

Eight groups = four skin-tone families x two face-shape families, mirroring the
FRCSyn Task-1 relabelling of BUPT-BalancedFace (four ethnicities x two genders)
without claiming to model any real population. Each group shifts the *means* of
a few identity coefficients (skin albedo, hair and iris colour, jaw, brow,
nose and lip geometry, beard and hair-style odds) so that per-group accuracy and
the TO = AVG - SD trade-off have something to measure; within-group spread stays
large so that identities of one group are still distinct.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Group:
    index: int
    name: str
    tone: str
    shape: str
    skin_rgb: tuple[float, float, float]  # mean skin albedo (display-space RGB, 0..1)
    hair_dark: float  # mean hair darkness 0 (blond) .. 1 (black)
    iris_light: float  # mean iris lightness 0 (dark brown) .. 1 (blue/grey)
    # additive shifts of identity-coefficient means (names from coefficients.IDENTITY_NORMAL)
    shifts: dict[str, float] = field(default_factory=dict)
    beard_prob: float = 0.0
    # odds of hair styles: short, medium, long, receding, volume
    hair_style_odds: tuple[float, float, float, float, float] = (1, 1, 1, 1, 1)


_TONES = {
    # name: (skin rgb, hair darkness, iris lightness, tone-specific shifts)
    "light": ((0.93, 0.76, 0.66), 0.45, 0.65, {"nose_w": -0.008, "lip_up": -0.004}),
    "medium": ((0.86, 0.66, 0.50), 0.80, 0.25, {"eye_h": -0.006, "nose_prot": -0.02}),
    "tan": ((0.72, 0.51, 0.36), 0.88, 0.12, {"nose_w": 0.006, "eye_y": 0.01}),
    "dark": ((0.45, 0.30, 0.21), 0.97, 0.05, {"nose_w": 0.02, "lip_up": 0.008}),
}

_SHAPES = {
    # narrow: smaller jaw and brows, fuller lips, longer hair; broad: the reverse, beards
    "narrow": (
        {"jaw_w": -0.04, "brow_thick": -0.006, "lip_lo": 0.006, "head_w": -0.015, "chin": -0.1},
        0.0,
        (1.0, 2.0, 3.0, 0.2, 0.8),
    ),
    "broad": (
        {"jaw_w": 0.05, "brow_thick": 0.008, "lip_lo": -0.004, "head_w": 0.02, "chin": 0.15},
        0.45,
        (3.0, 1.5, 0.3, 1.2, 0.8),
    ),
}


def _build() -> tuple[Group, ...]:
    groups = []
    for tone, (skin, hair, iris, tone_shift) in _TONES.items():
        for shape, (shape_shift, beard, odds) in _SHAPES.items():
            shifts = dict(tone_shift)
            for k, v in shape_shift.items():
                shifts[k] = shifts.get(k, 0.0) + v
            if tone == "dark":
                odds = (odds[0], odds[1], odds[2] * 0.6, odds[3], odds[4] * 2.5)
            groups.append(
                Group(
                    index=len(groups),
                    name=f"{tone}-{shape}",
                    tone=tone,
                    shape=shape,
                    skin_rgb=skin,
                    hair_dark=hair,
                    iris_light=iris,
                    shifts=shifts,
                    beard_prob=beard,
                    hair_style_odds=odds,
                )
            )
    return tuple(groups)


GROUPS: tuple[Group, ...] = _build()
GROUP_NAMES: tuple[str, ...] = tuple(g.name for g in GROUPS)
NUM_GROUPS = len(GROUPS)
