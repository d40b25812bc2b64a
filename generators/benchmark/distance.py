"""How far each generator's images are from real faces, in the independent judge's eyes.

Accuracy alone cannot say whether a generator draws faces: an undertrained generator's
coloured textures still train a recognizer to some accuracy. So every generated set gets
a Fréchet distance to real images in the *judge's* embedding space (the judge was trained
on other identities and conditions no generator, so it cannot be fooled the way a
generator's own encoder can), and a gate that flags sets whose samples are not faces.

The gate's criterion, on the judge's 2-Wasserstein scale ``W = sqrt(FD)`` between the
Gaussians fitted to the embeddings, against one real reference set ``A`` (half of the real
identities, ``half_of``; ``n`` images spread over as many of them as ``n`` allows):

* ``W_set``: the generated set's ``n`` images, spread over its identities;
* ``W_floor``: real images of the *other* half's identities drawn with the set's own
  identity structure (as many identities, as many images of each) — what a perfect
  generator of that many identities would score. Matching the structure matters: FD is
  biased upwards at small ``n``, and a set of 16 identities sits further from a
  100-identity reference than one of 100 does, whatever it draws (a floor spread over
  100 identities put clearly drawn heads of 16 identities under the threshold:
  docs/benchmarks.md, "The face gate");
* ``W_texture``: the same floor images phase-scrambled — each image keeps its Fourier
  amplitude spectrum (colour, contrast, texture statistics) and loses its structure, the
  classic non-face control of vision science, and exactly what an undertrained generator
  produces;
* ``face_score = (W_texture - W_set) / (W_texture - W_floor)``: 1 = as close to real as
  real faces are, 0 = as far as textures with real images' statistics. A set **passes**
  when ``face_score >= 0.5`` (closer to the real floor than to the texture control). If
  the judge cannot tell scrambled images from real (``W_texture <= W_floor``), the gate
  says ``undecided`` rather than guessing.

The reference stage also reports one floor and texture control spread over ``n``
identities: the scale of the judge's space, for the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthface.pipeline.atomic import atomic_path
from synthface.pipeline.errors import InputError

# A generated set passes the gate when it is at least this far from the texture control
# towards the real floor (0.5: closer to real faces than to textures).
GATE_THRESHOLD = 0.5


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of row vectors, in float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise InputError(f"Fréchet distance needs at least 2 embeddings, got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False)


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """``|mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))`` (Dowson & Landau; FID's formula).

    A singular product (fewer samples than dimensions) gets a small diagonal offset
    before the square root, as FID implementations do; the imaginary residue of the
    matrix square root is numerical noise and is dropped."""
    from scipy import linalg

    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.atleast_2d(cov1).astype(np.float64), np.atleast_2d(cov2).astype(np.float64)
    root = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(root).all():
        eps = 1e-6 * np.eye(len(cov1))
        root = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    root = np.real(root)
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * np.trace(root), 0.0))


def phase_scramble(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each image with its amplitude spectrum kept and its phases randomised.

    One random phase field per image, shared by the colour channels, so colours stay
    correlated as in the original; the mean colour (the DC term) is kept exactly."""
    rng = np.random.default_rng(seed)
    x = np.asarray(images, dtype=np.float64)
    out = np.empty_like(x)
    h, w = x.shape[1:3]
    for i, im in enumerate(x):
        phase = np.angle(np.fft.fft2(rng.standard_normal((h, w))))  # Hermitian-symmetric
        # The DC phase of real noise is 0 or pi (its sum's sign): pi would turn the mean
        # colour negative and the clip below would blacken about half the control set.
        phase[0, 0] = 0.0
        for c in range(x.shape[3]):
            f = np.fft.fft2(im[..., c])
            out[i, ..., c] = np.real(np.fft.ifft2(np.abs(f) * np.exp(1j * (np.angle(f) + phase))))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def gate(fd_set: float, fd_floor: float, fd_texture: float) -> dict:
    """The face/non-face verdict of a set from its FD and the two references (module doc)."""
    w_set, w_floor, w_tex = (float(np.sqrt(v)) for v in (fd_set, fd_floor, fd_texture))
    if w_tex <= w_floor:
        return {"face_score": None, "verdict": "undecided"}
    score = (w_tex - w_set) / (w_tex - w_floor)
    return {
        "face_score": round(score, 4),
        "verdict": "faces" if score >= GATE_THRESHOLD else "not faces",
    }


def embed(judge, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The judge's embeddings of uint8 images (resized to its input size)."""
    from synthface.generators.dataset.stages import resize

    return judge.embed(resize(images, judge.input_size), batch_size=batch_size)


def spread_quota(counts: dict[int, int], n: int) -> dict[int, int]:
    """How many images of each identity to take so that ``n`` images span as many
    identities as possible: one of each in label order, then a second of each, and so on
    (identities with fewer images drop out of later rounds)."""
    quota = dict.fromkeys(counts, 0)
    left = n
    while left > 0:
        round_ = [k for k in sorted(counts) if counts[k] > quota[k]]
        if not round_:
            break
        for k in round_[:left]:
            quota[k] += 1
        left -= min(left, len(round_))
    return quota


def spread_samples(path: str | Path, limit: int, labels=None) -> list[dict]:
    """``limit`` decoded samples of a dataset spread over its identities (``spread_quota``;
    of ``labels``' identities only), each identity's in shard order.

    Spread, not the first ``limit`` in shard order: a world set stores its identities'
    images together, so 128 images in shard order are ~11 identities, and the Gaussian
    then describes those identities' clusters more than what faces look like (the real
    floor rose to the texture control's distance and the gate stopped separating;
    docs/benchmarks.md, "The face gate"). Two passes, over the labels and then the kept
    samples, so memory holds ``limit`` samples whatever the dataset's size."""
    return _collect(path, lambda counts: spread_quota(counts, limit), labels)


def matched_quota(counts: dict[int, int], profile: list[int]) -> dict[int, int]:
    """Per-identity quotas that give ``profile``'s structure (one identity per entry, that
    many images of it): entries largest first, each to the first unused identity (in a
    hashed order, so no run of labels — one demographic group, one folder prefix — is
    favoured) with enough images, else to the unused one with most (taking what it has).
    Images an identity could not give are then taken from further unused identities, so
    the total stays ``sum(profile)`` where the dataset allows: a floor of fewer images
    would be biased upwards, which would let sets pass too easily; more identities bias it
    the safe way (a harder floor)."""
    free, quota = sorted(counts, key=_mixed), {}
    for want in sorted(profile, reverse=True)[: len(free)]:
        k = next((k for k in free if counts[k] >= want), max(free, key=lambda k: counts[k]))
        free.remove(k)
        quota[k] = min(want, counts[k])
    missing = sum(profile) - sum(quota.values())
    extra = spread_quota({k: counts[k] for k in free}, missing) if missing > 0 else {}
    return quota | {k: q for k, q in extra.items() if q}


def _mixed(label: int) -> bytes:
    """A label's place in an order that no run of labels survives (a hash of it)."""
    import hashlib

    return hashlib.blake2b(str(int(label)).encode(), digest_size=8).digest()


def _collect(path: str | Path, quota_of, labels) -> list[dict]:
    """Two streaming passes: count each identity's images (of ``labels``' identities), then
    keep each identity's first ``quota_of(counts)[k]`` in shard order."""
    from synthface.pipeline.shards import iter_samples

    counts: dict[int, int] = {}
    for s in iter_samples(path, decode=False):
        k = int(s["label"])
        if labels is None or labels(k):
            counts[k] = counts.get(k, 0) + 1
    quota = quota_of(counts)
    out = []
    for s in iter_samples(path):
        k = int(s["label"])
        if quota.get(k, 0) > 0:
            quota[k] -= 1
            out.append(s)
    return out


def matched_samples(path: str | Path, profile: list[int], labels=None) -> list[dict]:
    """Decoded samples of a dataset with a given identity structure (``matched_quota``)."""
    return _collect(path, lambda counts: matched_quota(counts, profile), labels)


def identity_profile(samples: list[dict]) -> list[int]:
    """How many of ``samples`` each identity has, largest first."""
    counts: dict[int, int] = {}
    for s in samples:
        counts[int(s["label"])] = counts.get(int(s["label"]), 0) + 1
    return sorted(counts.values(), reverse=True)


def _stack(path: str | Path, samples: list[dict]) -> np.ndarray:
    if not samples:
        raise InputError(f"{path}: no images for the Fréchet distance")
    return np.stack([s["image"] for s in samples])


def _images(path: str | Path, limit: int, labels=None) -> np.ndarray:
    """The images of ``spread_samples``."""
    return _stack(path, spread_samples(path, limit, labels))


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


def half_of(label: int) -> int:
    """Which half of the real identities an identity belongs to: 0 (the reference) or 1
    (the floors), by a hash of its label.

    Not by parity: the world assigns demographic groups round-robin (``label % 4``), so
    even and odd identities were two different pairs of groups, and the floor measured a
    demographic shift (its FD was above that of real faces of other worlds, which cover
    all groups). A user's labels may carry any order too (folder names sorted)."""
    return _mixed(label)[0] & 1


def _reference_side(k: int) -> bool:
    return half_of(k) == 0


def _floor_side(k: int) -> bool:
    return half_of(k) == 1


def real_reference(
    stage_dir: Path, judge: str, real: str, *, images: int, device: str, seed: int = 0
) -> dict:
    """The real reference ``A`` (one half of the identities: ``half_of``), its floor ``B``
    (the other half) and the texture control (``B`` phase-scrambled), ``n`` images each,
    spread over their identities, in the judge's space."""
    from synthface.recognition import load_embedder

    emb = load_embedder(judge, device=device)
    a = _images(real, images, _reference_side)
    b = _images(real, images, _floor_side)
    n = min(len(a), len(b), images)
    if n < 2:
        raise InputError(f"{real}: too few images for the Fréchet reference ({n})")
    ea, eb = embed(emb, a[:n]), embed(emb, b[:n])
    et = embed(emb, phase_scramble(b[:n], seed=seed))
    mu, cov = gaussian(ea)
    _save(stage_dir / "reference_mean.npy", mu)
    _save(stage_dir / "reference_cov.npy", cov)
    fd_floor = frechet_distance(*gaussian(eb), mu, cov)
    fd_texture = frechet_distance(*gaussian(et), mu, cov)
    return {
        "mean": str(stage_dir / "reference_mean.npy"),
        "cov": str(stage_dir / "reference_cov.npy"),
        "images": n,
        "fd_real_floor": round(fd_floor, 4),
        "fd_texture": round(fd_texture, 4),
        "gate": gate(fd_floor, fd_floor, fd_texture),  # real faces themselves: score 1
    }


def set_distance(
    stage_dir: Path,
    judge: str,
    dataset: str,
    reference: dict,
    *,
    real: str,
    device: str,
    seed: int = 0,
) -> dict:
    """FD of a generated set's ``n`` images (every generated image, before QC; spread over
    its identities) to the real reference, its own floor and texture control (the floor
    half's identities with the set's identity structure: module doc) and the gate's verdict."""
    from synthface.recognition import load_embedder

    emb = load_embedder(judge, device=device)
    samples = spread_samples(dataset, int(reference["images"]))
    profile = identity_profile(samples)
    floor = _stack(real, matched_samples(real, profile, _floor_side))
    e, ef = embed(emb, _stack(dataset, samples)), embed(emb, floor)
    et = embed(emb, phase_scramble(floor, seed=seed))
    mu, cov = np.load(reference["mean"]), np.load(reference["cov"])
    fd, fd_floor, fd_texture = (frechet_distance(*gaussian(x), mu, cov) for x in (e, ef, et))
    return {
        "fd": round(fd, 4),
        "images": len(e),
        "identities": len(profile),
        "fd_floor": round(fd_floor, 4),
        "fd_texture": round(fd_texture, 4),
        **gate(fd, fd_floor, fd_texture),
    }
