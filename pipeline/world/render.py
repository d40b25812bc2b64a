"""Vectorised 2.5-D renderer of the procedural face world.

Geometry is a union of analytic ellipsoids (cranium, jaw, chin, nose, ears,
neck; a hair shell and a back-hair volume; shoulders) ray-cast orthographically
for every pixel of a whole batch at once: in each primitive's frame a camera ray
is a line, so its front hit is the larger root of a quadratic whose coefficients
are affine/quadratic in the pixel coordinates. Skin primitives are merged with a
polynomial smooth maximum of depth (no seams between jaw, chin and nose); small
relief (eye sockets, brow ridge, cheekbones, lips, wrinkles) is added as a depth
bump. Normals come from finite differences of the depth map, so the relief
shades without any per-feature normal code.

Appearance is a *solid* texture over head-frame coordinates of the visible
surface point (eyes, iris, pupil, lashes, brows, lips, nostrils, moles, beard,
wrinkles, glasses, face masks), so it follows the geometry under any pose.
Shading is Lambertian with a coloured directional light plus a coloured ambient
term, and the clean image is exactly ``albedo * shading`` on foreground pixels
(before the optional blur/noise/JPEG degradations) -- the normal/albedo/shading
maps are MorphFace-style conditions of the very image that is rendered.

Everything is float32 numpy over (B, H, W) arrays; there are no per-pixel Python
loops. Work is done in chunks whose pixel count is bounded, so memory does not
grow with the batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from synthface.pipeline.errors import InputError
from synthface.pipeline.world.coefficients import IDENTITY_FIELDS, STYLE_FIELDS
from synthface.pipeline.world.groups import GROUPS

MIN_SIZE = 32
MAX_SIZE = 1024
_MISS = np.float32(-8.0)
_F = np.float32
# skin-tone table indexed by group
_SKIN = np.array([g.skin_rgb for g in GROUPS], dtype=np.float64)
# hair styles: (side hairline y, back hairline y, shell thickness, back-hair centre y, back ry)
_HAIR = np.array(
    [
        (0.12, -0.35, 0.035, 0.0, 0.0),  # short
        (-0.12, -0.55, 0.06, -0.2, 0.72),  # medium
        (-0.3, -0.7, 0.06, -0.6, 1.05),  # long
        (0.05, -0.35, 0.02, 0.0, 0.0),  # receding
        (-0.02, -0.5, 0.16, -0.15, 0.85),  # volume
    ],
    dtype=np.float64,
)


@dataclass
class RenderOutput:
    """A rendered batch. Maps are defined on ``mask`` pixels and zero elsewhere."""

    image: np.ndarray  # (B, H, W, 3) uint8, after degradations
    clean: np.ndarray  # (B, H, W, 3) float32 composite before degradations, 0..1
    albedo: np.ndarray  # (B, H, W, 3) float32 0..1
    shading: np.ndarray  # (B, H, W, 3) float32 >= 0 (coloured)
    normal: np.ndarray  # (B, H, W, 3) float32 unit camera-space normals (x right, y up, z out)
    mask: np.ndarray  # (B, H, W) bool: rendered head/hair/neck/shoulders
    # (B, 5, 2) float32 pixel (x, y) of the 5 alignment landmarks in insightface's order
    # (image-left eye, image-right eye, nose tip, image-left and image-right mouth corner),
    # with pixel centres at integer coordinates (OpenCV's convention); see _landmarks
    landmarks: np.ndarray | None = None
    # (B, 5) bool: the landmark's surface point is visible (not hidden by the head itself)
    landmarks_visible: np.ndarray | None = None


def check_size(size: int) -> int:
    if not isinstance(size, int | np.integer) or not MIN_SIZE <= int(size) <= MAX_SIZE:
        raise InputError(
            f"size {size!r}: must be an integer from {MIN_SIZE} to {MAX_SIZE} pixels "
            f"(features are sub-pixel below {MIN_SIZE})"
        )
    return int(size)


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=_F)[:, None, None]


def _rot(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """R = Rz(roll) @ Rx(pitch) @ Ry(yaw), (B, 3, 3) float64; angles in degrees."""
    y, p, r = (np.deg2rad(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    o, z = np.ones_like(y), np.zeros_like(y)
    ry = np.stack(
        [np.stack([cy, z, sy], -1), np.stack([z, o, z], -1), np.stack([-sy, z, cy], -1)], -2
    )
    rx = np.stack(
        [np.stack([o, z, z], -1), np.stack([z, cp, -sp], -1), np.stack([z, sp, cp], -1)], -2
    )
    rz = np.stack(
        [np.stack([cr, -sr, z], -1), np.stack([sr, cr, z], -1), np.stack([z, z, o], -1)], -2
    )
    return rz @ rx @ ry


def _rx(angle) -> np.ndarray:
    """Rotation about x: (3, 3) for a scalar angle (radians), (B, 3, 3) for an array."""
    a = np.asarray(angle, dtype=np.float64)
    c, s, o, z = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack(
        [np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2
    )


class _Rays:
    """Per-pixel orthographic camera rays of a batch, expressed in one rigid frame.

    A frame point q maps to camera coordinates ``scale * R q + (tx, ty, 0)``; the
    ray through pixel (u, v) is ``q = uu*g0 + vv*g1 + z*g2`` with ``g = R / scale``
    and z the camera depth.
    """

    def __init__(self, rot, scale, tx, ty, uu, vv, sq, px: float) -> None:
        self.rot, self.scale, self.tx, self.ty = rot, scale, tx, ty
        self.g = rot / scale[:, None, None]
        self.uu, self.vv = uu, vv
        self.uu2, self.vv2, self.uv = sq
        self.px = px
        self.size = uu.shape[-1]

    def point(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self.g
        return tuple(
            self.uu * _col(g[:, 0, k]) + self.vv * _col(g[:, 1, k]) + z * _col(g[:, 2, k])
            for k in range(3)
        )

    def window(self, centre: np.ndarray, radius: np.ndarray) -> tuple[slice, slice, slice]:
        """Pixel rows/columns that can see a sphere (centre, radius) in any image of the batch."""
        cam = self.scale[:, None] * np.einsum("bij,bj->bi", self.rot, centre)
        r = self.scale * radius
        u0, u1 = np.min(cam[:, 0] + self.tx - r), np.max(cam[:, 0] + self.tx + r)
        v0, v1 = np.min(cam[:, 1] + self.ty - r), np.max(cam[:, 1] + self.ty + r)
        n = self.size
        clip = lambda x: int(min(max(x, 0), n))  # noqa: E731
        cols = slice(
            clip(np.floor((u0 + 1) / self.px - 0.5)), clip(np.ceil((u1 + 1) / self.px + 0.5))
        )
        rows = slice(
            clip(np.floor((1 - v1) / self.px - 0.5)), clip(np.ceil((1 - v0) / self.px + 0.5))
        )
        return (slice(None), rows, cols)

    def ellipsoid(self, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray | None = None):
        """Camera depth of the front hit of each ray with an ellipsoid (``_MISS`` if none).

        centre, radii: (B, 3) in this frame; rot: optional (3, 3) or (B, 3, 3) primitive
        orientation (columns = primitive axes in this frame). Returns ``(window, depth)``:
        the depth is only computed inside the pixel window that can see the primitive.
        """
        win = self.window(centre, radii.max(1))
        g = self.g if rot is None else self.g @ rot  # rows become M^T g_i
        c = centre if rot is None else (centre[:, None, :] @ rot)[:, 0, :]
        k = g / radii[:, None, :]
        k3 = -c / radii
        k0, k1, k2 = k[:, 0], k[:, 1], k[:, 2]
        dot = lambda x, y: np.einsum("bi,bi->b", x, y)  # noqa: E731
        a = dot(k2, k2)
        uu, vv = self.uu[win], self.vv[win]
        bq = uu * _col(dot(k0, k2) / a)
        bq += vv * _col(dot(k1, k2) / a)
        bq += _col(dot(k3, k2) / a)
        cq = self.uu2[win] * _col(dot(k0, k0) / a)
        cq += self.vv2[win] * _col(dot(k1, k1) / a)
        cq += self.uv[win] * _col(2 * dot(k0, k1) / a)
        cq += uu * _col(2 * dot(k0, k3) / a)
        cq += vv * _col(2 * dot(k1, k3) / a)
        cq += _col((dot(k3, k3) - 1) / a)
        # normalised quadratic t^2 + 2 bq t + cq = 0 -> front root -bq + sqrt(bq^2 - cq)
        disc = bq * bq
        disc -= cq
        hit = disc > 0
        np.sqrt(np.maximum(disc, 0, out=disc), out=disc)
        disc -= bq
        return win, np.where(hit, disc, _MISS)

    def full(self, hit) -> np.ndarray:
        win, sub = hit
        out = np.full(self.uu.shape, _MISS, dtype=_F)
        out[win] = sub
        return out


def _union(z: np.ndarray, hit, k: float) -> None:
    """In place smooth union of a depth map with a windowed primitive hit."""
    win, sub = hit
    z[win] = _smax(z[win], sub, k)


class _Pix:
    """A compacted set of pixels: head-frame coordinates plus the image each belongs to.

    ``loc`` indexes the root set (the arrays that get scattered back); ``sub``
    narrows to a boolean selection so that each facial feature is evaluated only
    on the few pixels near it.
    """

    def __init__(self, owner, x, y, z, loc=None, facing=None) -> None:
        self.owner, self.x, self.y, self.z = owner, x, y, z
        self.ax = np.abs(x)
        self.loc = np.arange(len(x)) if loc is None else loc
        self.facing = facing

    def sub(self, keep: np.ndarray) -> _Pix:
        i = np.flatnonzero(keep)
        return _Pix(self.owner[i], self.x[i], self.y[i], self.z[i], self.loc[i], self.facing[i])

    def p(self, values) -> np.ndarray:
        """Per-image values (B,) -> per-pixel float32."""
        return np.asarray(values, dtype=_F)[self.owner]

    def c(self, colours) -> np.ndarray:
        """Per-image colours (B, 3) -> per-pixel (3, n) float32."""
        return np.asarray(colours, dtype=_F).T.copy()[:, self.owner]


def _smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth maximum: equals max(a, b) when |a - b| > k."""
    h = np.abs(a - b)
    np.subtract(k, h, out=h)
    np.maximum(h, 0, out=h)
    h *= h
    h *= _F(0.25 / k)
    h += np.maximum(a, b)
    return h


def _ramp(x: np.ndarray, width) -> np.ndarray:
    """Anti-aliased step: 0 for x <= 0, 1 for x >= width."""
    return np.clip(x / width, 0, 1)


def _gauss(ax, ay, cx, cy, sx, sy) -> np.ndarray:
    dx = (ax - cx) / sx
    dy = (ay - cy) / sy
    dx *= dx
    dy *= dy
    d = dx + dy
    np.negative(d, out=d)
    return np.exp(d, out=d)


def _cf(colour: np.ndarray) -> np.ndarray:
    """Per-image colours (B, 3) -> channel-first broadcastable (3, B, 1, 1) float32."""
    return np.ascontiguousarray(np.asarray(colour, dtype=_F).T)[:, :, None, None]


def _blend(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    """In place: img = img * (1 - alpha) + colour * alpha.

    img is channel-first, (3, B, H, W) or a compacted (3, N) -- a trailing RGB axis
    would make numpy's inner loops three elements long; colour broadcasts to img.
    """
    img += alpha * (colour - img)


def _lerp_table(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour ramp: x in [0, 1] over len(table) evenly spaced stops."""
    n = len(table) - 1
    pos = np.clip(x, 0, 1) * n
    i = np.minimum(pos.astype(int), n - 1)
    f = (pos - i)[:, None]
    return table[i] * (1 - f) + table[i + 1] * f


_HAIR_RAMP = np.array(
    [(0.86, 0.72, 0.48), (0.55, 0.38, 0.22), (0.3, 0.19, 0.11), (0.07, 0.055, 0.05)]
)
_IRIS_RAMP = np.array(
    [(0.16, 0.09, 0.05), (0.4, 0.28, 0.12), (0.3, 0.42, 0.25), (0.32, 0.48, 0.68)]
)


def _colours(idc: Mapping[str, np.ndarray], sty: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image RGB colours (B, 3) from coefficients; all float64."""
    group = idc["group"].astype(int)
    age_t = np.clip((sty["age"] - 30.0) / 45.0, 0, 1)[:, None]
    skin = _SKIN[group] * (1 + 1.6 * idc["skin_l"])[:, None]
    skin += np.stack(
        [idc["skin_red"] * 0.35, idc["skin_yellow"] * 0.12, -idc["skin_yellow"] * 0.35], -1
    )
    skin *= 1 - 0.08 * age_t
    skin += age_t * np.array([0.0, 0.01, -0.02])
    hair = _lerp_table(idc["hair_dark"], _HAIR_RAMP)
    red = (idc["hair_red"] * (1 - idc["hair_dark"]))[:, None]
    hair = hair * (1 - red) + np.array([0.62, 0.26, 0.1]) * red
    grey = np.clip((sty["age"] - idc["grey_onset"]) / 22.0, 0, 0.85)[:, None]
    hair = hair * (1 - grey) + np.array([0.78, 0.78, 0.76]) * grey
    lips = skin * np.array([0.78, 0.46, 0.46]) + idc["lip_red"][:, None] * np.array(
        [0.12, -0.04, -0.02]
    )
    brow = hair * (1 - 0.55 * idc["brow_dark"])[:, None]
    iris = _lerp_table(idc["iris"], _IRIS_RAMP)
    gt = sty["glasses_tone"][:, None]
    frame = np.array([0.05, 0.04, 0.04]) * (1 - gt) + np.array([0.55, 0.35, 0.15]) * gt
    mt = sty["mask_tone"]
    mask_c = np.where(
        (mt < 0.5)[:, None],
        np.array([0.62, 0.78, 0.9]) + (mt[:, None] * 0.4),
        np.array([0.12, 0.12, 0.14]) + (mt[:, None] - 0.5) * np.array([0.2, 0.2, 0.6]),
    )
    cloth = np.stack([sty["cloth_r"], sty["cloth_g"], sty["cloth_b"]], -1) * 0.8 + 0.08
    return {
        "skin": np.clip(skin, 0.03, 1),
        "hair": hair,
        "lips": np.clip(lips, 0, 1),
        "brow": brow,
        "iris": iris,
        "frame": frame,
        "mask": np.clip(mask_c, 0, 1),
        "cloth": cloth,
    }


def render(
    identity: Mapping[str, np.ndarray],
    style: Mapping[str, np.ndarray],
    size: int,
    *,
    degrade: bool = True,
    noise_seeds: np.ndarray | None = None,
    max_pixels: int = 1 << 20,
) -> RenderOutput:
    """Render a batch: ``identity`` and ``style`` are dicts of (B,) coefficient columns.

    ``noise_seeds`` (B,) keys the per-image sensor-noise generators so that the
    bytes never depend on how images are batched. ``degrade=False`` skips blur,
    noise and JPEG (then ``image == round(clean * 255)``).
    """
    size = check_size(size)
    for name, fields in (("identity", IDENTITY_FIELDS), ("style", STYLE_FIELDS)):
        src = identity if name == "identity" else style
        missing = [f for f in fields if f not in src]
        if missing:
            raise InputError(f"{name} coefficients missing field(s): {', '.join(missing)}")
    n = len(style["yaw"])
    if n == 0:
        raise InputError("render: empty batch (no coefficient rows)")
    if len(identity["group"]) != n:
        raise InputError(f"identity batch has {len(identity['group'])} rows, style batch {n}")
    seeds = np.arange(n) if noise_seeds is None else np.asarray(noise_seeds)
    chunk = max(1, max_pixels // (size * size))
    if n <= chunk:
        return _render_range(identity, style, size, slice(0, n), seeds, degrade)
    # several chunks: fill preallocated channel-first maps, hand out channel-last views
    maps = {
        f: np.empty((3, n, size, size), dtype=_F) for f in ("clean", "albedo", "shading", "normal")
    }
    image = np.empty((n, size, size, 3), dtype=np.uint8)
    mask = np.empty((n, size, size), dtype=bool)
    landmarks = np.empty((n, 5, 2), dtype=_F)
    visible = np.empty((n, 5), dtype=bool)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(n, lo + chunk))
        part = _render_range(identity, style, size, sl, seeds, degrade)
        for f, arr in maps.items():
            arr[:, sl] = np.moveaxis(getattr(part, f), -1, 0)
        image[sl] = part.image
        mask[sl] = part.mask
        landmarks[sl] = part.landmarks
        visible[sl] = part.landmarks_visible
    return RenderOutput(
        image=image,
        mask=mask,
        landmarks=landmarks,
        landmarks_visible=visible,
        **{f: np.moveaxis(a, 0, -1) for f, a in maps.items()},
    )


def _render_range(identity, style, size: int, sl: slice, seeds, degrade: bool) -> RenderOutput:
    idc = {k: np.asarray(v, dtype=np.float64)[sl] for k, v in identity.items()}
    sty = {k: np.asarray(v, dtype=np.float64)[sl] for k, v in style.items()}
    out = _render_chunk(idc, sty, size)
    if degrade:
        from synthface.pipeline.world.degrade import degrade_batch

        out.image = degrade_batch(out.clean, sty, seeds[sl])
    return out


def _render_chunk(
    idc: dict[str, np.ndarray], sty: dict[str, np.ndarray], size: int
) -> RenderOutput:
    b = len(sty["yaw"])
    px = 2.0 / size  # pixel size in camera units
    coords = (np.arange(size, dtype=_F) + _F(0.5)) * _F(px) - _F(1.0)
    u = coords[None, None, :]
    v = -coords[None, :, None]

    # ---- pose and alignment ------------------------------------------------
    rot = _rot(sty["yaw"], sty["pitch"], sty["roll"])
    rot_body = _rot(sty["yaw"] * 0.25, np.zeros(b), sty["roll"] * 0.3)
    scale = 0.86 * sty["scale"]
    eye_y = idc["eye_y"] + 0.0
    tip_y = eye_y - idc["nose_len"]
    mouth_y = tip_y - idc["mouth_gap"]
    # keep the face centre near the image centre like a landmark alignment would
    anchor = np.stack([np.zeros(b), (eye_y + mouth_y) / 2, np.full(b, 0.68)], -1)
    proj = scale[:, None] * np.einsum("bij,bj->bi", rot, anchor)
    tx = -0.8 * proj[:, 0] + sty["shift_x"]
    ty = -0.12 - 0.8 * (proj[:, 1] - scale * (eye_y + mouth_y) / 2) + sty["shift_y"]
    uu = (u - _col(tx)).astype(_F)
    vv = (v - _col(ty)).astype(_F)
    uu = np.broadcast_to(uu, (b, size, size))
    vv = np.broadcast_to(vv, (b, size, size))
    sq = (uu * uu, vv * vv, uu * vv)
    head = _Rays(rot, scale, tx, ty, uu, vv, sq, px)
    body = _Rays(rot_body, scale, tx, ty, uu, vv, sq, px)

    # ---- geometry ------------------------------------------------------------
    ones, zeros = np.ones(b), np.zeros(b)
    c3 = lambda x, y, z: np.stack([x, y, z], -1)  # noqa: E731
    opening = sty["mouth_open"]
    hw, hh, hd = idc["head_w"], idc["head_h"], idc["head_d"]
    cranium = head.full(
        head.ellipsoid(c3(zeros, 0.25 * ones, -0.1 * ones), c3(hw, 0.85 * hh / 0.95, hd))
    )
    jaw_c = c3(zeros, -0.22 - 0.04 * opening, zeros)
    zskin = cranium
    _union(
        zskin,
        head.ellipsoid(jaw_c, c3(idc["jaw_w"], idc["jaw_len"] + 0.03 * opening, 0.8 * hd)),
        0.12,
    )
    chin_c = c3(zeros, -0.02 - idc["jaw_len"] - 0.05 * opening, 0.3 + 0.06 * idc["chin"])
    _union(
        zskin, head.ellipsoid(chin_c, c3(0.15 + 0.05 * idc["chin"], 0.14 * ones, 0.16 * ones)), 0.1
    )
    # nose: an ellipsoid sunk into the face so that its rim lies behind the face
    # surface (then the smooth union has no seam); the tip is a depth bump below
    nl, nw, npr = idc["nose_len"], idc["nose_w"], idc["nose_prot"]
    nose_c = c3(zeros, eye_y - 0.55 * nl, 0.53 * ones)
    _union(
        zskin,
        head.ellipsoid(nose_c, c3(0.5 * nw + 0.04, 0.6 * nl + 0.02, npr + 0.1), _rx(-0.12)),
        0.12,
    )
    ear_y = eye_y - 0.45 * nl + idc["ear_y"]
    es = idc["ear_size"]
    for side in (-1.0, 1.0):
        ear_c = c3(side * 0.92 * hw, ear_y, -0.1 * ones)
        _union(zskin, head.ellipsoid(ear_c, c3(0.07 * ones, 0.8 * es, 0.45 * es), _rx(0.25)), 0.04)
    _union(
        zskin,
        body.ellipsoid(
            c3(zeros, -0.95 * ones, -0.2 * ones), c3(0.33 * ones, 0.62 * ones, 0.36 * ones)
        ),
        0.1,
    )

    # hair: a shell around the cranium cut by the style's hairline, and a back volume
    style_i = np.clip(idc["hair_style"].astype(int), 0, len(_HAIR) - 1)
    hs = _HAIR[style_i]
    vol = hs[:, 2] * np.clip(1 + 0.25 * idc["hair_vol"], 0.4, 1.8)
    shell = head.full(
        head.ellipsoid(
            c3(zeros, 0.25 * ones, -0.1 * ones), c3(hw + vol, 0.85 * hh / 0.95 + vol, hd + vol)
        )
    )
    hx, hy, hz = head.point(shell)
    hz = hz + _F(0.1)
    cosphi = hz / np.sqrt(hx * hx + hz * hz + _F(1e-6))
    fringe = np.where(np.isin(style_i, (1, 2, 4)), np.clip(idc["fringe"], 0, None) * 0.12, 0)
    y_front = idc["forehead"] + np.where(style_i == 3, 0.35, 0.0)
    yf = _col(y_front) - _col(fringe) * np.clip(1 - (hx / _F(0.45)) ** 2, 0, 1)
    yf += _F(0.06) * _col(idc["part"]) * hx  # asymmetric hairline of a side parting
    ys, yb = _col(hs[:, 0]), _col(hs[:, 1])
    front = np.sqrt(np.clip(cosphi, 0, 1))
    y_line = np.where(cosphi > 0, ys + (yf - ys) * front, ys + (yb - ys) * (-cosphi))
    zhair = np.where(hy > y_line, shell, _MISS)
    has_back = hs[:, 4] > 0
    back_r = c3(hw + vol + 0.06, np.where(has_back, hs[:, 4], 0.1), 0.5 * ones)
    back = head.full(head.ellipsoid(c3(zeros, hs[:, 3], -0.32 * ones), back_r))
    back = np.where(_col(has_back), back, _MISS)
    zhair = np.maximum(zhair, back)

    depth = np.maximum(zskin, zhair)
    mask = depth > _MISS + 1
    is_hair = (zhair >= zskin) & mask
    is_skin = mask & ~is_hair

    # ---- surface coordinates ------------------------------------------------------
    # Facial relief and paint only exist on the front half of the head, so they are
    # computed on a compacted list of those pixels and scattered back; each feature
    # further restricts itself to the pixels near it (``_Pix.sub``).
    qx, qy, qz = head.point(depth)
    landmarks, visible = _landmarks(idc, sty, qx, qy, is_skin & (qz > 0), px)
    fidx = np.flatnonzero(mask & (qz > _F(-0.2)))
    pix = _Pix(fidx // (size * size), qx.ravel()[fidx], qy.ravel()[fidx], qz.ravel()[fidx])
    skin_ = is_skin.ravel()[fidx]
    pix.facing = _ramp(pix.z - _F(0.25), 0.1) * skin_  # front of the face, skin only
    aa = _F(px / 0.86 * 0.9)  # anti-aliasing width in head units
    brow_c = eye_y + idc["brow_gap"] + 0.03 * sty["brow_raise"]

    # ---- relief: a depth bump along the view direction ------------------------------
    bump = np.zeros(len(fidx), dtype=_F)
    face = pix.sub(pix.facing > 0)

    def add_bump(cx, cy, sx, sy, height, use_abs=True) -> None:
        x = face.ax if use_abs else face.x
        r = face.sub(
            (np.abs(x - face.p(cx)) < 2.5 * face.p(sx))
            & (np.abs(face.y - face.p(cy)) < 2.5 * face.p(sy))
        )
        xx = r.ax if use_abs else r.x
        g = _gauss(xx, r.y, r.p(cx), r.p(cy), r.p(sx), r.p(sy)) * r.p(height) * r.facing
        bump[r.loc] += g

    full = np.ones(b)
    add_bump(idc["eye_sep"], eye_y, idc["eye_w"] * 1.3, idc["eye_h"] * 2.4, -0.05 * full)
    add_bump(idc["eye_sep"], brow_c, idc["eye_w"] * 1.7, 0.05 * full, 0.025 * full)
    add_bump(
        0.33 * full,
        -0.12 + 0.03 * sty["smile"],
        0.15 * full,
        0.12 * full,
        0.03 + 0.04 * idc["cheek"] + 0.03 * sty["smile"],
    )
    add_bump(0 * full, mouth_y, idc["mouth_w"] * 0.8, 0.05 * full, 0.025 * full, use_abs=False)
    add_bump(0.42 * nw, tip_y + 0.04, 0.2 * nw, 0.05 * full, 0.04 * full)
    add_bump(0 * full, tip_y + 0.06, 0.3 * nw, 0.06 * full, 0.04 * full, use_abs=False)
    age_t = np.clip((sty["age"] - 30.0) / 45.0, 0, 1)
    fh = face.sub(
        (face.y > face.p(brow_c + 0.06)) & (face.y < face.p(idc["forehead"])) & (face.p(age_t) > 0)
    )
    wrinkle = np.cos(fh.y * _F(70)) * _ramp(fh.p(idc["forehead"] - 0.05) - fh.y, 0.05)
    wrinkle *= _ramp(fh.y - fh.p(brow_c + 0.06), 0.05) * fh.p(age_t) * fh.facing
    bump[fh.loc] += wrinkle * _F(0.006)
    depth.ravel()[fidx] += bump * pix.p(scale * rot[:, 2, 2])

    normal = _normals(depth, mask, px)

    # ---- albedo -----------------------------------------------------------------------
    col = _colours(idc, sty)
    strands = np.sin(qx * _F(47)) * _F(0.04) + _F(1)
    albedo = np.where(is_hair, _cf(col["hair"]) * strands, _cf(col["skin"]))
    A = albedo.reshape(3, -1)[:, fidx]  # compacted (3, F) copy, painted then scattered back

    def paint(r: _Pix, alpha: np.ndarray, colour, per_pixel: bool = False) -> None:
        """Blend into A over region r: colour is an RGB constant, (B, 3) per image or,
        with ``per_pixel``, (3, n) for the region's pixels."""
        if per_pixel:
            c = colour
        elif np.ndim(colour) == 1:
            c = np.asarray(colour, dtype=_F)[:, None]
        else:
            c = r.c(colour)
        A[:, r.loc] += alpha * (c - A[:, r.loc])

    near = lambda r, cx, cy, hx, hy: r.sub(  # noqa: E731
        (np.abs(r.x - r.p(cx)) < r.p(hx)) & (np.abs(r.y - r.p(cy)) < r.p(hy))
    )
    near_abs = lambda r, cx, cy, hx, hy: r.sub(  # noqa: E731
        (np.abs(r.ax - r.p(cx)) < r.p(hx)) & (np.abs(r.y - r.p(cy)) < r.p(hy))
    )
    r = near_abs(face, 0.33 * full, -0.15 * full, 0.3 * full, 0.25 * full)
    paint(
        r,
        _gauss(r.ax, r.y, _F(0.33), _F(-0.15), _F(0.14), _F(0.1)) * r.facing * _F(0.25),
        (0.8, 0.35, 0.35),
    )
    # beard and moustache
    r = face.sub((face.p(idc["beard"]) > 0) & (face.y < face.p(mouth_y + 0.14)))
    my = r.p(mouth_y)
    beard = _ramp(my + _F(0.09) - r.y, 0.04)
    moustache = _ramp(_F(0.05) - np.abs(r.y - my - _F(0.065)), aa) * _ramp(
        r.p(idc["mouth_w"] * 1.15) - r.ax, aa
    )
    paint(
        r, np.maximum(beard, moustache) * r.p(idc["beard"]) * r.facing * _F(0.85), col["hair"] * 0.8
    )
    # lips and mouth
    r = near(
        face,
        0 * full,
        mouth_y,
        idc["mouth_w"] * 1.1,
        0.05 + idc["lip_lo"] + 0.05 * sty["mouth_open"],
    )
    mx = r.x / r.p(idc["mouth_w"])
    fx = np.clip(1 - mx * mx, 0, None)
    myy = r.y - r.p(mouth_y) - r.p(sty["smile"]) * _F(0.04) * mx * mx
    gap = r.p(sty["mouth_open"] * 0.05) * np.sqrt(fx)
    ul, ll = r.p(idc["lip_up"]) * fx, r.p(idc["lip_lo"]) * fx
    upper = _ramp(ul * 0.5 - np.abs(myy - gap * 0.5 - ul * 0.5) + aa * 0.3, aa)
    lower = _ramp(ll * 0.5 - np.abs(myy + gap * 0.5 + ll * 0.5) + aa * 0.3, aa)
    paint(r, np.maximum(upper, lower) * r.facing, col["lips"])
    inner = _ramp(gap * 0.5 - np.abs(myy) + aa * 0.25, aa)
    slit = _ramp(_F(0.008) + aa * 0.3 - np.abs(myy), aa * 0.6) * _ramp(_F(1.05) - np.abs(mx), 0.1)
    inner = np.maximum(inner, slit * _F(0.8)) * r.facing
    teeth = _ramp(gap * 0.5 - np.abs(myy - gap * 0.25), aa) * _ramp(_F(0.55) - np.abs(mx), 0.1)
    paint(r, inner, (0.12, 0.054, 0.054))
    paint(r, teeth * inner, (0.85, 0.85, 0.85))
    # nostrils
    r = near_abs(face, 0.4 * nw, tip_y + 0.025, 0.22 * nw * 2.5, 0.05 * full)
    nost = _gauss(r.ax, r.y, r.p(0.4 * nw), r.p(tip_y + 0.025), r.p(0.22 * nw), _F(0.018))
    paint(r, _ramp(nost - _F(0.5), 0.3) * r.facing * _F(0.8), col["skin"] * 0.1)
    # moles
    for k in range(3):
        s_k = idc[f"mole{k}_s"]
        r = near(face, idc[f"mole{k}_x"], idc[f"mole{k}_y"], s_k + aa, s_k + aa)
        d = np.hypot(r.x - r.p(idc[f"mole{k}_x"]), r.y - r.p(idc[f"mole{k}_y"]))
        paint(r, _ramp(r.p(s_k) - d, aa * 0.5) * r.facing * _F(0.8), col["skin"] * 0.35)
    # eyes: almond opening, sclera, iris, pupil, lash line
    r = near_abs(face, idc["eye_sep"], eye_y, idc["eye_w"] * 1.15, idc["eye_w"] * 0.8)
    ew, eh = r.p(idc["eye_w"]), r.p(idc["eye_h"])
    ex = r.ax - r.p(idc["eye_sep"])
    eyy = r.y - r.p(eye_y) - r.p(idc["eye_tilt"]) * ex
    ef = np.clip(1 - (ex / ew) ** 2, 0, None)
    upper_lid = eh * ef * r.p(np.clip(1 - sty["blink"], 0.08, 1))
    eye_in = _ramp(np.minimum(upper_lid - eyy, eyy + eh * ef * 0.75), aa * 0.5) * r.facing
    ix = r.x - np.sign(r.x) * r.p(idc["eye_sep"]) - r.p(sty["gaze_x"] * idc["eye_w"] * 0.3)
    iy = eyy - r.p(sty["gaze_y"] * idc["eye_h"] * 0.4)
    ir = np.hypot(ix, iy)
    eye_rgb = np.empty((3, len(r.loc)), dtype=_F)
    eye_rgb[:] = np.array([[0.9], [0.88], [0.85]], dtype=_F)
    _blend(eye_rgb, _ramp(eh * 1.05 - ir, aa * 0.5), r.c(col["iris"]))
    _blend(eye_rgb, _ramp(eh * 0.45 - ir, aa * 0.5), _F(0.03))
    paint(r, eye_in, eye_rgb, per_pixel=True)
    lash = _ramp(_F(0.017) + aa * 0.3 - np.abs(eyy - upper_lid), aa * 0.6)
    lash *= _ramp(ew * 1.08 - np.abs(ex), aa) * r.facing
    paint(r, lash, (0.06, 0.06, 0.06))
    # brows
    r = near_abs(face, idc["eye_sep"] + 0.02, brow_c, idc["eye_w"] * 1.45, 0.1 * full)
    bx = (r.ax - r.p(idc["eye_sep"] + 0.02)) / r.p(idc["eye_w"] * 1.3)
    by = r.y - r.p(brow_c) - r.p(idc["brow_arch"]) * np.clip(1 - bx * bx, 0, None)
    thick = r.p(idc["brow_thick"]) * (1 - 0.45 * np.clip(bx, 0, 1))
    brow = _ramp(thick * 0.5 - np.abs(by), aa * 0.6) * _ramp(_F(1) - np.abs(bx), 0.15) * r.facing
    paint(r, brow * _F(0.9), col["brow"])
    # forehead wrinkles and nasolabial folds with age
    paint(fh, np.clip(wrinkle, 0, None) * _F(0.25), col["skin"] * 0.6)
    r = face.sub((face.p(age_t) > 0) & (face.y < face.p(tip_y)) & (face.y > face.p(mouth_y)))
    tip = r.p(tip_y)
    fold = _ramp(_F(0.012) - np.abs(r.ax - r.p(0.45 * nw) - (tip - r.y) * _F(0.45)), aa)
    fold *= _ramp(tip - r.y, 0.02) * _ramp(r.y - r.p(mouth_y), 0.03) * r.facing * r.p(age_t)
    paint(r, fold * _F(0.5), col["skin"] * 0.55)
    # occluders: glasses (clear frames or sunglasses) and face masks
    gy_b = idc["eye_w"] * 1.2
    r = pix.sub((pix.p(sty["glasses"]) > 0) & (np.abs(pix.y - pix.p(eye_y)) < pix.p(gy_b * 1.3)))
    esep, ey, ew = r.p(idc["eye_sep"]), r.p(eye_y), r.p(idc["eye_w"])
    gx, gy = ew * 1.55, ew * 1.2
    gd = np.sqrt(((r.ax - esep) / gx) ** 2 + ((r.y - ey - _F(0.01)) / gy) ** 2)
    front_any = _ramp(r.z - _F(0.1), 0.1)
    bar_y = np.abs(r.y - ey - gy * 0.4)
    frame = _ramp(_F(0.16) - np.abs(gd - 1), 0.12)
    bridge = _ramp(_F(0.016) - bar_y, aa) * _ramp(esep - gx * 0.9 - r.ax, aa)
    arm = (
        _ramp(_F(0.014) - bar_y, aa)
        * _ramp(r.ax - esep - gx * 0.95, aa)
        * _ramp(r.z + _F(0.1), 0.05)
    )
    lens = _ramp(_F(1) - gd, 0.1) * _F(0.93) * (r.p(sty["glasses"]) == 2)
    paint(r, lens * front_any, 0.05 + col["frame"] * 0.2)
    paint(r, np.maximum(np.maximum(frame, bridge) * front_any, arm), col["frame"])
    r = pix.sub(pix.p(sty["mask"]) > 0)
    top = r.p(eye_y - 0.45 * idc["nose_len"])
    cover = _ramp(top - r.y - _F(0.03) * r.ax, aa) * _ramp(r.y - r.p(-0.32 - idc["jaw_len"]), 0.02)
    cover *= _ramp(r.z - _F(0.12), 0.08) * skin_[r.loc]
    pleat = _F(1) - _F(0.12) * (np.cos((r.y - top) * _F(55)) > _F(0.6))
    paint(r, cover, r.c(col["mask"]) * pleat, per_pixel=True)
    strap = _ramp(
        _F(0.015) - np.minimum(np.abs(r.y - top + _F(0.06)), np.abs(r.y - r.p(mouth_y) + _F(0.1))),
        aa,
    )
    strap *= _ramp(r.z - _F(-0.1), 0.05) * _ramp(_F(0.3) - r.z, 0.05)
    paint(r, strap, col["mask"])
    albedo.reshape(3, -1)[:, fidx] = A

    # ---- shading ------------------------------------------------------------------
    az, el = np.deg2rad(sty["light_az"]), np.deg2rad(sty["light_el"])
    light = np.stack([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)], -1)
    warm = sty["light_warm"][:, None]
    light_rgb = sty["light_int"][:, None] * (1 + warm * np.array([0.18, 0.0, -0.25]))
    tint = sty["ambient_tint"][:, None]
    amb_rgb = sty["ambient"][:, None] * (1 + tint * np.array([-0.12, 0.0, 0.18]))
    lf = light.astype(_F)
    ndl = normal[0] * _col(lf[:, 0]) + normal[1] * _col(lf[:, 1]) + normal[2] * _col(lf[:, 2])
    np.maximum(ndl, 0, out=ndl)
    sky = normal[1] * _F(0.15) + _F(0.85)
    shading = ndl * _cf(light_rgb) + sky * _cf(amb_rgb)

    albedo *= mask
    shading *= mask
    bg = _background(sty, u, v, size)
    clean = np.where(mask, albedo * shading, bg)
    np.clip(clean, 0, 1, out=clean)
    hwc = lambda x: np.moveaxis(x, 0, -1)  # noqa: E731  channel-last views, no copies
    image = np.ascontiguousarray(hwc((clean * 255 + 0.5).astype(np.uint8)))
    clean = hwc(clean)
    return RenderOutput(
        image=image,
        clean=clean,
        albedo=hwc(albedo),
        shading=hwc(shading),
        normal=hwc(normal),
        mask=mask,
        landmarks=landmarks,
        landmarks_visible=visible,
    )


def landmark_targets(idc: Mapping[str, np.ndarray], sty: Mapping[str, np.ndarray]) -> np.ndarray:
    """(B, 5, 2) head-frame (x, y) of the 5 landmarks, where the texture paints them.

    Eye centres are the centres of the painted eye openings (gaze moves the iris, not
    the landmark), the nose tip is the centre of the tip bump, mouth corners are where
    the lips end (``|x| = mouth_w``, raised by the smile curve).
    """
    eye_y = idc["eye_y"]
    tip_y = eye_y - idc["nose_len"]
    corner_y = tip_y - idc["mouth_gap"] + 0.04 * sty["smile"]
    sep, mw, zero = idc["eye_sep"], idc["mouth_w"], np.zeros_like(eye_y)
    xs = np.stack([-sep, sep, zero, -mw, mw], -1)
    ys = np.stack([eye_y, eye_y, tip_y + 0.06, corner_y, corner_y], -1)
    return np.stack([xs, ys], -1)


def _landmarks(idc, sty, qx, qy, valid, px: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions of the landmarks: where the visible surface has their head-frame x, y.

    The nearest valid pixel is found by search, then refined by one Newton step on the
    local (central-difference) Jacobian of the surface coordinates, so positions are
    sub-pixel. A landmark whose nearest visible surface point lies more than two pixels
    away (in head units) is hidden behind the head: its position is then that nearest
    point and ``visible`` is False.
    """
    b, size = qx.shape[0], qx.shape[-1]
    targets = landmark_targets(idc, sty).astype(_F)  # (B, 5, 2)
    out = np.zeros((b, 5, 2), dtype=_F)
    visible = np.zeros((b, 5), dtype=bool)
    rows = np.arange(b)
    unit = _F(px / 0.86)  # one pixel in head units (scale ~ 1)
    for k in range(5):
        tx, ty = _col(targets[:, k, 0]), _col(targets[:, k, 1])
        d2 = np.where(valid, (qx - tx) ** 2 + (qy - ty) ** 2, np.inf).reshape(b, -1)
        flat = d2.argmin(1)
        r, c = flat // size, flat % size
        visible[:, k] = np.sqrt(d2[rows, flat]) < 2 * unit
        c0, c1 = np.maximum(c - 1, 0), np.minimum(c + 1, size - 1)
        r0, r1 = np.maximum(r - 1, 0), np.minimum(r + 1, size - 1)
        jac = np.empty((b, 2, 2), dtype=np.float64)
        for i, q in enumerate((qx, qy)):
            jac[:, i, 0] = (q[rows, r, c1] - q[rows, r, c0]) / np.maximum(c1 - c0, 1)
            jac[:, i, 1] = (q[rows, r1, c] - q[rows, r0, c]) / np.maximum(r1 - r0, 1)
        err = np.stack([targets[:, k, 0] - qx[rows, r, c], targets[:, k, 1] - qy[rows, r, c]], -1)
        det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
        ok = np.abs(det) > 1e-12
        safe = np.where(ok, det, 1.0)
        dc = (jac[:, 1, 1] * err[:, 0] - jac[:, 0, 1] * err[:, 1]) / safe
        dr = (jac[:, 0, 0] * err[:, 1] - jac[:, 1, 0] * err[:, 0]) / safe
        step = ok & visible[:, k] & (np.abs(dc) <= 1) & (np.abs(dr) <= 1)
        out[:, k, 0] = c + np.where(step, dc, 0.0)
        out[:, k, 1] = r + np.where(step, dr, 0.0)
    return out, visible


def _normals(depth: np.ndarray, mask: np.ndarray, px: float) -> np.ndarray:
    """Unit normals from finite differences of depth; one-sided next to background."""

    def diff(axis: int) -> np.ndarray:
        zp = np.pad(
            depth, [(0, 0)] + [(1, 1) if a == axis else (0, 0) for a in (1, 2)], mode="edge"
        )
        mp = np.pad(mask, [(0, 0)] + [(1, 1) if a == axis else (0, 0) for a in (1, 2)])
        sl = lambda s: tuple(slice(None) if a != axis else s for a in range(3))  # noqa: E731
        fwd = zp[sl(slice(2, None))] - depth
        bwd = depth - zp[sl(slice(None, -2))]
        okf = mp[sl(slice(2, None))]
        okb = mp[sl(slice(None, -2))]
        both = okf & okb
        d = np.where(both, (fwd + bwd) * _F(0.5), np.where(okf, fwd, np.where(okb, bwd, _F(0))))
        return np.clip(d / _F(px), -8, 8)

    dzdu = diff(2)
    dzdv = -diff(1)  # rows go down, v goes up
    inv = 1 / np.sqrt(dzdu * dzdu + dzdv * dzdv + 1)
    inv *= mask
    return np.stack([-dzdu * inv, -dzdv * inv, inv])  # channel-first


def _background(
    sty: Mapping[str, np.ndarray], u: np.ndarray, v: np.ndarray, size: int
) -> np.ndarray:
    """Two-colour gradient with a soft blob of a third colour: cheap clutter."""
    ang = sty["bg_angle"]
    t = np.clip(_F(0.5) + _F(0.5) * (u * _col(np.cos(ang)) + v * _col(np.sin(ang))), 0, 1)
    c1 = np.stack([sty["bg_r1"], sty["bg_g1"], sty["bg_b1"]], -1)
    c2 = np.stack([sty["bg_r2"], sty["bg_g2"], sty["bg_b2"]], -1)
    # muted colours: half way between the drawn colour and its grey
    c1 = 0.5 * c1 + 0.5 * c1.mean(-1, keepdims=True)
    c2 = 0.5 * c2 + 0.5 * c2.mean(-1, keepdims=True)
    bg = _cf(c1) + t * _cf(c2 - c1)
    blob = _gauss(
        u,
        v,
        _col(sty["bg_blob_x"]),
        _col(sty["bg_blob_y"]),
        _col(sty["bg_blob_s"]),
        _col(sty["bg_blob_s"]),
    )
    c3 = (1 - c1[:, [1, 2, 0]]) * 0.9
    _blend(bg, blob * _F(0.7), _cf(c3))
    return bg
