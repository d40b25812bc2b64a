"""Attacks on protected recognizers, the same for every method, on held-out identities.

Targets are the first K genuine pairs (A_i, B_i) of a verification ``.bin`` (identities no
model was trained on). The server holds B_i's protected form; the gallery holds a different
photograph A_i of each target. Chance identification is 1/K.

- **visual** (:func:`visual_attack`): what the server sees, looked at as an image
  (``ProtectedRecognizer.visual``), against B: PSNR and SSIM.
- **reconstruction** (:func:`reconstruction_attack`): the attacker knows the protection
  (code, and the client's weights where the client is public) and has its own face images
  (``attacker_images``, identities disjoint from the targets). It protects them with its
  own randomness, trains an inversion network on (server view -> image) pairs, then
  reconstructs every B. Reported: PSNR/SSIM of the reconstructions, and the share that an
  **independent recognizer** (the *judge*, trained on other data) identifies as the right
  person among the K gallery photographs (rank 1).
- **templates** (:func:`template_attacks`, SlerpFace): inversion of protected templates
  (template + stored key) to the unprotected embedding (identification against unprotected
  gallery templates) and to images (judge identification), next to the same inversions of
  unprotected templates; and **cross-key matching**: verification accuracy between templates
  of one person enrolled with two different keys vs other people (50 % = unlinkable).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthface.pipeline.errors import InputError
from synthface.recognition.privacy._base import InputNorm, ProtectedRecognizer
from synthface.recognition.privacy.nets import TemplateDecoder, UNet

__all__ = [
    "InversionSettings",
    "identification_rate",
    "load_dataset_images",
    "load_target_pairs",
    "psnr",
    "reconstruction_attack",
    "ssim",
    "template_attacks",
    "to_input",
    "visual_attack",
]


# ------------------------------------------------------------------ image metrics


def _unit(x: torch.Tensor) -> torch.Tensor:
    return (x.float().clamp(-1, 1) + 1) / 2


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of images in [-1, 1], on the [0, 1] scale (capped at 100 dB)."""
    mse = (_unit(a) - _unit(b)).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def ssim(a: torch.Tensor, b: torch.Tensor, *, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of images in [-1, 1] on the [0, 1] scale.

    Gaussian window (11 px, sigma 1.5, shrunk to the image), valid positions only, mean
    over positions and channels.
    """
    x, y = _unit(a).double(), _unit(b).double()
    window = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(
        -((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2)
    )
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(x.shape[1], 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, groups=x.shape[1])

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy = blur(x * x) - mx * mx, blur(y * y) - my * my
    cov = blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1).float()


# ------------------------------------------------------------------ data


def to_input(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x size x size in [-1, 1] (the trainer's input)."""
    from synthface.recognition.training.data import to_model_input

    return to_model_input(torch.from_numpy(np.ascontiguousarray(images)), size)


def dataset_split(dataset_dir: str | Path) -> str:
    """``train`` if the dataset has it, else its only split (world ``--split eval`` sets)."""
    from synthface.pipeline.shards import load_manifest

    splits = sorted(load_manifest(dataset_dir)["splits"])
    if "train" in splits or len(splits) != 1:
        return "train"
    return splits[0]


def load_dataset_images(dataset_dir: str | Path, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` images of a shard dataset (uint8 N x H x W x 3) and their labels."""
    from synthface.pipeline.shards import iter_samples

    images, labels = [], []
    for sample in iter_samples(dataset_dir, dataset_split(dataset_dir), decode=True):
        if len(images) >= limit:
            break
        images.append(sample["image"])
        labels.append(int(sample["label"]))
    if len(images) < 2:
        raise InputError(f"{dataset_dir}: needs at least 2 images for the attacker's data")
    return np.stack(images), np.asarray(labels)


def load_target_pairs(bin_path: str | Path, count: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images A and B (uint8) of the first ``count`` genuine pairs of a verification ``.bin``."""
    from synthface.pipeline.formats.verification_bin import read_bin
    from synthface.recognition.evaluation.embed import decode_images

    blobs, issame = read_bin(bin_path)
    genuine = [i for i, same in enumerate(issame) if same][:count]
    if len(genuine) < count:
        raise InputError(f"{bin_path}: {len(genuine)} genuine pairs, the attack asks for {count}")
    a = decode_images([blobs[2 * i] for i in genuine], (size, size), source=str(bin_path))
    b = decode_images([blobs[2 * i + 1] for i in genuine], (size, size), source=str(bin_path))
    return a, b


def _gen(like: torch.Tensor, seed: int) -> torch.Generator:
    return torch.Generator(device=like.device).manual_seed(seed)


@torch.no_grad()
def _batched(fn: Callable, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([fn(x[lo : lo + batch]) for lo in range(0, x.shape[0], batch)])


# ------------------------------------------------------------------ judge


@torch.no_grad()
def judge_embed(judge: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Flip-summed, normalised embeddings of images in [-1, 1] by the independent recognizer."""
    hw = tuple(judge.input_size)
    if tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False)
    return _batched(lambda b: F.normalize(judge(b) + judge(b.flip(-1)), dim=1), x)


def identification_rate(gallery: torch.Tensor, probes: torch.Tensor) -> float:
    """Rank-1 rate: probe i's most similar gallery row is row i (rows normalised)."""
    sims = F.normalize(probes, dim=1) @ F.normalize(gallery, dim=1).T
    hits = sims.argmax(1) == torch.arange(len(probes), device=sims.device)
    return float(hits.float().mean())


# ------------------------------------------------------------------ visual


def server_view_of(model: nn.Module) -> Callable:
    """``f(x, generator)`` -> what the server receives; the image itself when unprotected."""
    if isinstance(model, ProtectedRecognizer):
        return model.server_view
    return lambda x, generator=None: x


@torch.no_grad()
def visual_attack(model: nn.Module, targets: torch.Tensor, batch: int = 32) -> dict | None:
    """Mean PSNR/SSIM of the server's view looked at as an image, against the originals.

    Frequency views are inverted at the up-sampled resolution, where the inverse is exact;
    the originals are compared there after the same bilinear up-sampling.
    """
    if not isinstance(model, ProtectedRecognizer):
        return {"psnr": float(psnr(targets, targets).mean()), "ssim": 1.0}
    if model.visual(targets[:1]) is None:
        return None
    p, s = [], []
    for lo in range(0, len(targets), batch):
        x = targets[lo : lo + batch]
        seen = model.visual(x)
        if seen.shape[-2:] != x.shape[-2:]:
            x = F.interpolate(x, size=seen.shape[-2:], mode="bilinear", align_corners=False)
        p.append(psnr(seen, x))
        s.append(ssim(seen, x))
    return {"psnr": float(torch.cat(p).mean()), "ssim": float(torch.cat(s).mean())}


# ------------------------------------------------------------------ inversion


@dataclass
class InversionSettings:
    """How the attacker trains its inversion networks (Adam, L1 on images)."""

    steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3
    widths: tuple[int, ...] = (32, 64, 128)
    seed: int = 0


class MapInverter(nn.Module):
    """Server maps (C x h x w) -> image: normalise per channel, resize, U-Net, tanh."""

    def __init__(self, channels: int, size: int, widths) -> None:
        super().__init__()
        self.size = size
        self.norm = InputNorm(channels)
        self.net = UNet(channels, 3, widths, out_activation="tanh")

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        v = self.norm(view.float())
        if v.shape[-1] != self.size:
            v = F.interpolate(v, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net(v)


class VectorInverter(nn.Module):
    """Template vector -> target vector (an unprotected embedding): a 2-layer MLP."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_features),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, out_features),
        )

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)


def fit(
    net: nn.Module,
    source: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
    target: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    settings: InversionSettings,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[float]:
    """Train ``net`` to map ``source(batch, gen)`` to ``target(batch)`` on the attacker's images.

    The protection's randomness comes from the attacker's own generator. Returns the mean
    loss of each tenth of the run (the attack learns when it falls).
    """
    device = images.device
    gen = torch.Generator(device=device).manual_seed(settings.seed)
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    net.train()
    history, window = [], []
    chunk = max(1, settings.steps // 10)
    for step in range(settings.steps):
        idx = torch.randint(len(images), (settings.batch_size,), generator=gen, device=device)
        x = images[idx]
        with torch.no_grad():
            inp, want = source(x, gen), target(x)
        value = loss(net(inp), want)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        window.append(float(value.detach()))
        if (step + 1) % chunk == 0:
            history.append(float(np.mean(window)))
            window = []
    net.eval()
    return history


def _l1(a, b):
    return F.l1_loss(a, b)


def _cosine(a, b):
    return (1 - F.cosine_similarity(a, b, dim=1)).mean()


def _image_scores(recon, targets_b, judge, gallery):
    return {
        "psnr": float(psnr(recon, targets_b).mean()),
        "ssim": float(ssim(recon, targets_b).mean()),
        "identification": identification_rate(gallery, judge_embed(judge, recon)),
    }


def reconstruction_attack(
    model: nn.Module,
    attacker: torch.Tensor,
    targets_a: torch.Tensor,
    targets_b: torch.Tensor,
    judge: nn.Module,
    settings: InversionSettings,
) -> dict:
    """Train a (server maps -> image) inverter on the attacker's images; attack every B."""
    model.eval()
    view = server_view_of(model)
    with torch.no_grad():
        channels = view(attacker[:2], _gen(attacker, 0)).shape[1]
    torch.manual_seed(settings.seed)
    net = MapInverter(channels, targets_b.shape[-1], settings.widths).to(attacker.device)
    history = fit(net, view, lambda x: x, attacker, settings, _l1)
    recon = _batched(lambda x: net(view(x)), targets_b)
    gallery = judge_embed(judge, targets_a)
    out = _image_scores(recon, targets_b, judge, gallery)
    out.update(
        {
            "loss_history": [round(v, 5) for v in history],
            "chance": 1.0 / len(targets_b),
            "judge_on_originals": identification_rate(gallery, judge_embed(judge, targets_b)),
        }
    )
    return out


def template_attacks(
    model,
    attacker: torch.Tensor,
    targets_a: torch.Tensor,
    targets_b: torch.Tensor,
    judge: nn.Module,
    settings: InversionSettings,
) -> dict:
    """Template inversion (to embedding and to image) and cross-key matching for SlerpFace."""
    from synthface.recognition.privacy.slerpface import cross_key_scores

    model.eval()
    size = targets_b.shape[-1]

    def protected(x, gen):
        return model.enrol(x, gen).flat()

    def plain(x, gen=None):
        return model(x)

    with torch.no_grad():
        p_dim = protected(attacker[:2], _gen(attacker, 0)).shape[1]
        e_dim = plain(attacker[:2]).shape[1]
    gallery_e = _batched(plain, targets_a)
    gallery_j = judge_embed(judge, targets_a)
    out: dict = {"chance": 1.0 / len(targets_b)}

    # what a leak of unprotected templates gives: matching directly, inversion to images
    out["unprotected_match_identification"] = identification_rate(
        gallery_e, _batched(plain, targets_b)
    )
    torch.manual_seed(settings.seed)
    dec = TemplateDecoder(e_dim, size).to(attacker.device)
    fit(dec, plain, lambda x: x, attacker, settings, _l1)
    recon = _batched(lambda x: dec(plain(x)), targets_b)
    out["unprotected_image_inversion"] = _image_scores(recon, targets_b, judge, gallery_j)

    # protected templates (with their stored keys): inversion to the embedding and to images
    torch.manual_seed(settings.seed)
    inv = VectorInverter(p_dim, e_dim).to(attacker.device)
    fit(inv, protected, plain, attacker, settings, _cosine)
    stolen = _batched(lambda x: inv(model.enrol(x).flat()), targets_b)
    out["protected_embedding_inversion_identification"] = identification_rate(gallery_e, stolen)
    torch.manual_seed(settings.seed)
    dec = TemplateDecoder(p_dim, size).to(attacker.device)
    fit(dec, protected, lambda x: x, attacker, settings, _l1)
    recon = _batched(lambda x: dec(model.enrol(x).flat()), targets_b)
    out["protected_image_inversion"] = _image_scores(recon, targets_b, judge, gallery_j)

    # matching as deployed (B's template against A enrolled with a key), and cross-key
    # comparisons (A enrolled with one key, B with another); impostors: B shifted by one
    with torch.no_grad():
        shift = torch.roll(torch.arange(len(targets_b)), 1)
        ka = _batched_enrol(model, targets_a, settings.seed + 1)
        kb = _batched_enrol(model, targets_b, settings.seed + 2)
        tb = _batched_templates(model, targets_b)
        same = _pair_scores(model, tb, ka, shift)
        cross = (cross_key_scores(kb, ka), cross_key_scores(_take(kb, shift), ka))
    matching = _verify(*same, "matching")
    linkage = _verify(*cross, "cross-key")
    out["matching_accuracy"] = matching.accuracy
    out["cross_key_accuracy"] = linkage.accuracy
    out["cross_key_auc"] = linkage.roc_auc
    # the deployed decision: the best-accuracy threshold of key matching on these targets
    threshold = _best_threshold(*same)
    out["cross_key_match_rate"] = float((cross[0] > threshold).float().mean())
    return out


def _batched_enrol(model, x: torch.Tensor, seed: int):
    from synthface.recognition.privacy.slerpface import Protected

    gen = _gen(x, seed)
    parts = [model.enrol(x[lo : lo + 256], gen) for lo in range(0, len(x), 256)]
    return Protected(torch.cat([p.template for p in parts]), torch.cat([p.key for p in parts]))


def _batched_templates(model, x: torch.Tensor):
    from synthface.recognition.privacy.slerpface import Templates

    parts = [model.templates(x[lo : lo + 256]) for lo in range(0, len(x), 256)]
    return Templates(torch.cat([p.groups for p in parts]), torch.cat([p.weights for p in parts]))


def _take(p, index):
    return type(p)(p.template[index], p.key[index])


def _pair_scores(model, query, gallery, shift):
    from synthface.recognition.privacy.slerpface import Templates, match

    genuine = match(query, gallery, alpha=model.alpha)
    shifted = Templates(query.groups[shift], query.weights[shift])
    return genuine, match(shifted, gallery, alpha=model.alpha)


def _verify(genuine: torch.Tensor, impostor: torch.Tensor, name: str):
    from synthface.recognition.evaluation.verification import evaluate_scores

    # interleaved, so every contiguous fold holds both kinds
    scores = torch.stack([genuine, impostor], 1).flatten().double().cpu().numpy()
    labels = np.tile([True, False], len(genuine))
    return evaluate_scores(scores, labels, metric="cosine", name=name, nfolds=10)


def _best_threshold(genuine: torch.Tensor, impostor: torch.Tensor) -> float:
    scores = torch.cat([genuine, impostor])
    labels = torch.cat([torch.ones_like(genuine), torch.zeros_like(impostor)]).bool()
    best, best_t = -1.0, float(scores.max())
    for t in scores.unique():
        acc = float(((scores > t) == labels).float().mean())
        if acc > best:
            best, best_t = acc, float(t)
    return best_t
