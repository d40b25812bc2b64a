"""Block-DCT front end (JPEG's transform) in plain torch, with an exact inverse.

Every frequency-domain protection (DuetFace, PartialFace, DCTDP, MinusFace) starts here.
Steps, for an image batch ``x`` in [-1, 1] (N x 3 x S x S, the trainer's input):

1. ``x * 0.5 + 0.5`` -> [0, 1];
2. bilinear up-sampling by ``upsample`` (the reference: x8, 112 -> 896 px), times 255;
3. RGB -> YCbCr (JPEG's full-range matrix), minus 128;
4. non-overlapping 8x8 blocks, orthonormal 2-D DCT-II per block;
5. rearranged to ``N x 192 x S' x S'`` with ``S' = S * upsample / 8``: channel
   ``64 * colour + 8 * u + v`` holds frequency (u, v) of colour Y, Cb or Cr (row-major in
   the block, *not* zig-zag), one value per block.

With the default ``upsample=8`` each block covers one input pixel, so the frequency maps
have the input's resolution and a backbone keeps its geometry: 112 px faces give 112 x 112
maps (the reference), 32 px faces 32 x 32 maps. That is how this project scales the
reference's 112 -> 896 px up-sampling to small inputs: the factor stays 8, the maps follow
the input size.

The DCT matrix is orthonormal, so :func:`from_bdct` (steps 5..1 backwards) reproduces the
up-sampled image to float rounding. Going back to S x S samples each block at its centre
(what a plain bilinear ``interpolate`` to the input size does), which inverts the
up-sampling only approximately. Missing channels (pruned or held by another party) are
given as zeros.

Speed: the chain is affine, and with ``upsample=8`` each block depends on a 3x3
neighbourhood of input pixels, so :func:`to_bdct` runs it as one 3x3 convolution
(192 x 3 x 3 x 3, read off the step-by-step :func:`to_bdct_explicit`); block-centre
decoding is a 1x1 convolution. On the development CPU the step-by-step path cost more than
a training step of the tiny backbone at 32 px; the convolution costs a few percent of one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

BLOCK = 8
FREQS = BLOCK * BLOCK  # 64 frequencies per colour
COLOURS = 3
CHANNELS = COLOURS * FREQS  # 192

# JPEG (JFIF) full-range RGB <-> YCbCr on 0..255 values (offsets applied separately)
_RGB_TO_YCBCR = (
    (0.299, 0.587, 0.114),
    (-0.168735892, -0.331264108, 0.5),
    (0.5, -0.418687589, -0.081312411),
)
_YCBCR_OFFSET = (0.0, 128.0, 128.0)


def dct_matrix(n: int = BLOCK, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D`` (n x n): coefficients of a block ``B`` are ``D B D^T``."""
    k = torch.arange(n, dtype=torch.float64).view(-1, 1)
    i = torch.arange(n, dtype=torch.float64).view(1, -1)
    d = torch.cos((2 * i + 1) * k * math.pi / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.to(dtype=dtype, device=device)


def channel(colour: int, u: int, v: int) -> int:
    """Channel index of frequency (u, v) of colour 0 (Y), 1 (Cb) or 2 (Cr)."""
    if not (0 <= colour < COLOURS and 0 <= u < BLOCK and 0 <= v < BLOCK):
        raise ValueError(f"no BDCT channel for colour {colour}, frequency ({u}, {v})")
    return colour * FREQS + BLOCK * u + v


def all_colours(freqs: Sequence[int]) -> list[int]:
    """The channels of frequency indices ``8u + v`` in each of Y, Cb, Cr (colour-major)."""
    for f in freqs:
        if not 0 <= f < FREQS:
            raise ValueError(f"frequency index {f} outside 0..{FREQS - 1}")
    return [c * FREQS + f for c in range(COLOURS) for f in freqs]


def complement(channels: Sequence[int], total: int = CHANNELS) -> list[int]:
    """The channels of ``range(total)`` not in ``channels``, in order."""
    drop = set(channels)
    return [c for c in range(total) if c not in drop]


def map_size(input_size: int, upsample: int = BLOCK) -> int:
    """Side of the frequency maps for square inputs of ``input_size`` pixels."""
    side = input_size * upsample
    if upsample < 1 or side % BLOCK:
        raise ValueError(
            f"input size {input_size} x upsample {upsample} = {side} px is not a multiple of "
            f"the {BLOCK}-px DCT block"
        )
    return side // BLOCK


def _colour_matrix(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(_RGB_TO_YCBCR, dtype=x.dtype, device=x.device)
    off = torch.tensor(_YCBCR_OFFSET, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return m, off


def _basis(dtype, device) -> torch.Tensor:
    """The 64 DCT basis blocks as conv filters (64 x 1 x 8 x 8), filter ``8u + v``."""
    d = dct_matrix(dtype=dtype, device=device)
    return torch.einsum("ui,vj->uvij", d, d).reshape(FREQS, 1, BLOCK, BLOCK)


def to_bdct(x: torch.Tensor, upsample: int = BLOCK) -> torch.Tensor:
    """Images in [-1, 1] (N x 3 x H x W) -> block-DCT channels (N x 192 x H' x W').

    Float32 and float64 inputs keep their dtype; lower precisions are computed in float32
    (a DC coefficient reaches 1024, beyond bf16's exact integers). With ``upsample=8`` the
    whole chain runs as one 3x3 convolution (see :func:`_folded`), which equals
    :func:`to_bdct_explicit` to float rounding (a test checks this).
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"to_bdct expects N x 3 x H x W images, got {tuple(x.shape)}")
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if upsample != BLOCK:
        return to_bdct_explicit(x.to(dtype), upsample)
    kernel, bias = _folded(dtype, x.device)
    return F.conv2d(F.pad(x.to(dtype), (1, 1, 1, 1), mode="replicate"), kernel, bias)


def to_bdct_explicit(x: torch.Tensor, upsample: int = BLOCK) -> torch.Tensor:
    """Steps 1-5 of the module docstring, one by one (the definition :func:`to_bdct` follows).

    The DCT is linear per colour plane, so it runs on the RGB planes (a stride-8
    convolution with the basis blocks) and the colour matrix is applied to the
    coefficients afterwards; the -128 level shift only moves the DC coefficients.
    """
    x = x * 0.5 + 0.5
    if upsample != 1:
        x = F.interpolate(x, scale_factor=upsample, mode="bilinear", align_corners=False)
    n, _, h, w = x.shape
    if h % BLOCK or w % BLOCK:
        raise ValueError(f"up-sampled size {h} x {w} is not a multiple of the {BLOCK}-px block")
    planes = F.conv2d((x * 255.0).reshape(n * 3, 1, h, w), _basis(x.dtype, x.device), stride=BLOCK)
    m, off = _colour_matrix(planes)
    coeff = torch.einsum("cd,ndfhw->ncfhw", m, planes.view(n, 3, FREQS, h // BLOCK, w // BLOCK))
    coeff[:, :, 0] += (off - 128.0) * BLOCK
    return coeff.reshape(n, CHANNELS, h // BLOCK, w // BLOCK)


@functools.lru_cache(maxsize=8)
def _folded(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`to_bdct_explicit` at ``upsample=8`` as a 3x3 convolution (192 x 3 x 3 x 3) + bias.

    Bilinear x8 up-sampling (``align_corners=False``) fills the 8x8 block of input pixel i
    from pixels i-1, i, i+1 (clamped at the border, which replicate padding reproduces),
    and everything after it is linear per block: the chain is affine in a 3x3
    neighbourhood. The kernel is read off the explicit path's response to unit impulses.
    """
    zero = torch.zeros(1, 3, 5, 5, dtype=torch.float64)
    base = to_bdct_explicit(zero - 1.0)  # images are in [-1, 1]: -1 is a black pixel
    bias = base[0, :, 2, 2]
    kernel = torch.empty(CHANNELS, 3, 3, 3, dtype=torch.float64)
    for c in range(3):
        for i in range(3):
            for j in range(3):
                impulse = zero - 1.0
                impulse[0, c, 1 + i, 1 + j] += 1.0
                kernel[:, c, i, j] = to_bdct_explicit(impulse)[0, :, 2, 2] - bias
    # the explicit path maps x, not x + 1: move the offset into the bias
    bias = bias + kernel.sum(dim=(1, 2, 3))
    return kernel.to(dtype=dtype, device=device), bias.to(dtype=dtype, device=device)


def from_bdct(coeff: torch.Tensor, *, output_size: int | None = None) -> torch.Tensor:
    """Inverse of :func:`to_bdct`: 192 channels -> images in [-1, 1] (not clipped).

    Without ``output_size`` the result has the up-sampled size (8 x the map side), where the
    round trip is exact. With ``output_size`` equal to the map side, the image is sampled
    at block centres, as a plain bilinear ``interpolate`` down to the input size does
    (computed directly: each block's centre is a fixed combination of its own 64
    coefficients); area averaging instead would keep only the DC coefficients. Other sizes
    are resized bilinearly from the full inverse.
    """
    if coeff.ndim != 4 or coeff.shape[1] != CHANNELS:
        raise ValueError(f"from_bdct expects N x {CHANNELS} x H x W, got {tuple(coeff.shape)}")
    dtype = coeff.dtype if coeff.dtype in (torch.float32, torch.float64) else torch.float32
    coeff = coeff.to(dtype)
    if output_size is not None and output_size == coeff.shape[-1]:
        weight, bias = _centres(dtype, coeff.device)
        return F.conv2d(coeff, weight, bias)
    rgb = _inverse(coeff)
    if output_size is not None and output_size != rgb.shape[-1]:
        rgb = F.interpolate(
            rgb, size=(output_size, output_size), mode="bilinear", align_corners=False
        )
    return rgb


def _inverse(coeff: torch.Tensor) -> torch.Tensor:
    n, _, hb, wb = coeff.shape
    coeff = coeff.reshape(n, 3, FREQS, hb, wb).clone()
    m, off = _colour_matrix(coeff)
    coeff[:, :, 0] -= (off - 128.0) * BLOCK
    planes = torch.einsum("cd,ndfhw->ncfhw", torch.linalg.inv(m), coeff)
    rgb = F.conv_transpose2d(
        planes.reshape(n * 3, FREQS, hb, wb), _basis(coeff.dtype, coeff.device), stride=BLOCK
    ).view(n, 3, hb * BLOCK, wb * BLOCK)
    return rgb / 255.0 * 2.0 - 1.0


@functools.lru_cache(maxsize=8)
def _centres(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-centre sampling of :func:`_inverse` as a 1x1 convolution (3 x 192) + bias."""
    eye = torch.eye(CHANNELS, dtype=torch.float64).view(CHANNELS, CHANNELS, 1, 1)
    zero = torch.zeros(1, CHANNELS, 1, 1, dtype=torch.float64)

    def centre(c):
        full = _inverse(c)  # N x 3 x 8 x 8; bilinear /8 averages rows/columns 3 and 4
        return full[:, :, 3:5, 3:5].mean(dim=(2, 3))

    bias = centre(zero)[0]
    weight = (centre(eye) - bias).T.reshape(3, CHANNELS, 1, 1)
    return weight.to(dtype=dtype, device=device).contiguous(), bias.to(dtype=dtype, device=device)


def scatter_channels(
    values: torch.Tensor, channels: Sequence[int], total: int = CHANNELS
) -> torch.Tensor:
    """Place ``values`` (N x len(channels) x H x W) at ``channels`` of a zero N x total tensor."""
    if values.shape[1] != len(channels):
        raise ValueError(f"{values.shape[1]} maps for {len(channels)} channel indices")
    out = values.new_zeros(values.shape[0], total, *values.shape[2:])
    out[:, list(channels)] = values
    return out
