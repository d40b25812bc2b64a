"""Privacy protections: the block-DCT front end, channel splits, DCTDP's noise, SlerpFace's
templates, the attacks, and every method training a few steps on shards (CPU, tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ConfigError, InputError
from synthface.recognition.privacy import bdct
from synthface.recognition.privacy.methods import create_protected

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ block DCT


def test_bdct_round_trip_is_exact_and_channels_are_row_major():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    coeff = bdct.to_bdct(x)  # x8 up-sampling: 128 px, 16 x 16 maps
    assert coeff.shape == (2, 192, 16, 16)
    up = F.interpolate(x * 0.5 + 0.5, scale_factor=8, mode="bilinear", align_corners=False)
    back = bdct.from_bdct(coeff)
    assert torch.allclose(back, up * 2 - 1, atol=1e-12)
    # the folded 3x3 convolution is the explicit chain (up-sample, YCbCr, block DCT)
    assert torch.allclose(coeff, bdct.to_bdct_explicit(x), atol=1e-9)
    f32 = bdct.to_bdct(x.float())
    assert (f32 - coeff).abs().max() < 2e-3  # float32 rounding only (values up to 1024)
    # down to the input size: block centres, as interpolate() samples them
    small = bdct.from_bdct(coeff, output_size=16)
    want = F.interpolate(up, size=(16, 16), mode="bilinear", align_corners=False) * 2 - 1
    assert torch.allclose(small, want, atol=1e-12)
    assert (bdct.from_bdct(bdct.to_bdct(x.float(), upsample=1)) - x.float()).abs().max() < 1e-4

    # a grey image plus one DCT basis function of Y lands in channel 8u + v of Y only
    d = bdct.dct_matrix()
    for u, v in ((0, 0), (1, 2), (7, 3)):
        block = 40.0 * torch.outer(d[u], d[v])  # Y - 128 for R = G = B
        img = ((128.0 + block) / 255.0 * 2 - 1).expand(1, 3, 8, 8)
        c = bdct.to_bdct(img, upsample=1)[0, :, 0, 0]
        assert torch.allclose(c[bdct.channel(0, u, v)], torch.tensor(40.0, dtype=c.dtype))
        others = torch.ones(192, dtype=torch.bool)
        others[bdct.channel(0, u, v)] = False
        assert c[others].abs().max() < 1e-9


def test_channel_splits_and_subsets_are_the_documented_ones():
    from synthface.recognition.privacy import dctdp, duetface, partialface

    def per_colour(freqs):
        return {c * 64 + f for c in range(3) for f in freqs}

    client = {0, 1, 2, 3, 4, 5, 8, 9, 16, 24}
    assert (
        set(duetface.CLIENT_CHANNELS) == per_colour(client) and len(duetface.CLIENT_CHANNELS) == 30
    )
    assert set(duetface.SERVER_CHANNELS) == set(range(192)) - per_colour(client)
    assert len(duetface.SERVER_CHANNELS) == 162

    pruned = {8 * u + v for u in range(8) for v in range(8) if u + v <= 3}
    assert set(partialface.PRUNED_FREQS) == pruned == {0, 1, 2, 3, 8, 9, 10, 16, 17, 24}
    subsets = [set(s) for s in partialface.SUBSETS]
    assert len(subsets) == 6 and all(len(s) == 9 for s in subsets)
    assert set().union(*subsets) == set(range(64)) - pruned  # a partition of the 54
    assert sum(len(s) for s in subsets) == 54
    assert len(set(partialface.TRIPLES)) == 20 and all(len(t) == 3 for t in partialface.TRIPLES)
    assert all(sorted(p) == list(range(9)) for p in partialface.PERMUTATIONS)
    chans = partialface.subset_channels(4, 2)
    assert len(chans) == 27 and {c % 64 for c in chans} == subsets[4]

    # per sample: an identity only ever draws subsets of its own triple
    model = create_protected("partialface", backbone="tiny", input_size=16, embedding_dim=8)
    labels = torch.arange(40).repeat(25)
    torch.manual_seed(0)
    subset, perm = model.draw(len(labels), labels, None, "cpu")
    for y in range(40):
        drawn = set(subset[labels == y].tolist())
        assert drawn == set(partialface.TRIPLES[y % 20])
    assert set(perm.tolist()) == {0, 1, 2}

    assert set(dctdp.KEPT_CHANNELS) == set(range(192)) - {0, 64, 128}
    assert len(dctdp.KEPT_CHANNELS) == 189


def test_minusface_shuffles_each_sample_by_its_own_permutation():
    """The property bench/minusface_learnability.py measures the cost of."""
    model = create_protected(
        "minusface",
        backbone="tiny",
        input_size=16,
        embedding_dim=8,
        generator_widths=[8, 16],
        n_dup=2,
    )
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    x = x.repeat(3, 1, 1, 1)
    view = model.server_view(x, torch.Generator().manual_seed(1))
    assert view.shape == (3, 6, 16, 16)
    # one image three times: three different recodings, and two within each sample
    assert not torch.allclose(view[0], view[1]) and not torch.allclose(view[1], view[2])
    assert not torch.allclose(view[0, :3], view[0, 3:])
    assert torch.equal(view, model.server_view(x, torch.Generator().manual_seed(1)))


def test_dctdp_noise_scale_follows_the_budget():
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    means = {}
    for budget in (4.0, 0.5):
        model = create_protected(
            "dctdp", backbone="tiny", input_size=16, embedding_dim=8, budget_mean=budget
        ).eval()
        n = model.rho.numel()
        assert torch.allclose(model.budgets().sum(), torch.tensor(budget * n), rtol=1e-4)
        assert torch.allclose(model.noise_scale(), torch.full_like(model.rho, 1.0 / budget))
        clean = bdct.to_bdct(x)[:, model.channels]
        noise = model.server_view(x) - clean - model.mu
        means[budget] = float(noise.detach().abs().mean())  # E|Laplace(0, b)| = b
        assert means[budget] == pytest.approx(1.0 / budget, rel=0.02)
    assert means[0.5] / means[4.0] == pytest.approx(8.0, rel=0.03)

    # budgets are learnable: a step on rho moves budget between elements, the total stays
    model.train()
    loss = model.server_view(x).pow(2).mean()
    loss.backward()
    assert model.rho.grad is not None and model.rho.grad.abs().sum() > 0
    with torch.no_grad():
        model.rho -= 1e3 * model.rho.grad
    eps = model.budgets().detach()
    assert float(eps.std()) > 0 and torch.allclose(eps.sum(), torch.tensor(0.5 * n), rtol=1e-4)


# ------------------------------------------------------------------ SlerpFace


def _noisy_templates(identities: int, groups: int, dim: int, noise: float, seed: int):
    from synthface.recognition.privacy.slerpface import Templates

    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(identities, groups, dim, generator=gen)
    weights = torch.softmax(torch.randn(identities, groups, generator=gen), 1)

    def sample():
        return Templates(base + noise * torch.randn(base.shape, generator=gen), weights)

    return sample(), sample()


def test_slerpface_matching_after_protection_and_cross_key_separation():
    from synthface.recognition.evaluation import roc
    from synthface.recognition.privacy import slerpface as sf

    a, b = _noisy_templates(200, 49, 16, 0.4, seed=0)
    gen = torch.Generator().manual_seed(3)
    gallery = sf.enrol(
        a, sf.draw_keys(a.groups.shape, gen), alpha=0.9, drop_rate=0.5, generator=gen
    )
    assert (gallery.template == 0).float().mean() > 0.2  # group dropout happened
    shift = torch.roll(torch.arange(200), 1)
    genuine = sf.match(b, gallery)
    impostor = sf.match(sf.Templates(b.groups[shift], b.weights[shift]), gallery)
    assert genuine.mean() > impostor.mean()
    labels = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    assert roc.auc(labels, torch.cat([genuine, impostor]).numpy()) > 0.99

    # the same person enrolled with another key is not accepted at the matching threshold
    other = sf.enrol(b, sf.draw_keys(b.groups.shape, gen), alpha=0.9, drop_rate=0.5, generator=gen)
    cross = sf.cross_key_scores(other, gallery)
    threshold = float((genuine.min() + impostor.max()) / 2)
    assert float((cross > threshold).float().mean()) == 0.0
    assert float(cross.max()) < float(impostor.mean())

    # the protected template differs from the unprotected one in every group
    unit = F.normalize(a.groups, dim=-1)
    cos = (F.normalize(gallery.template, dim=-1) * unit).sum(-1)
    assert float(cos.mean()) < 0.6


def test_slerpface_model_templates_and_embedding_dim():
    with pytest.raises(ConfigError, match="embedding_dim must be L x G"):
        create_protected("slerpface", backbone="tiny", input_size=32, embedding_dim=128)
    model = create_protected(
        "slerpface", backbone="tiny", input_size=32, embedding_dim=64, group_size=16
    ).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    t = model.templates(x)
    assert t.groups.shape == (3, 4, 16) and torch.allclose(t.weights.sum(1), torch.ones(3))
    e = model(x)
    assert e.shape == (3, 64) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.server_view(x).shape == (3, 128)  # template + key


# ------------------------------------------------------------------ attacks


def _world_images(tmp_path, identities, per_identity, split="train"):
    from synthface.pipeline.world import make_world_dataset
    from synthface.recognition.privacy.attacks import load_dataset_images

    make_world_dataset(
        tmp_path, identities=identities, per_identity=per_identity, size=32, split=split
    )
    return load_dataset_images(tmp_path, identities * per_identity)


def test_attack_learns_on_unprotected_input_and_less_on_protected(tmp_path):
    from synthface.recognition.backbones import create_backbone
    from synthface.recognition.privacy import attacks

    images, _ = _world_images(tmp_path / "att", 20, 4, split="eval")
    x = attacks.to_input(images, 32)
    attacker, targets_a, targets_b = x[:48], x[48:64], x[64:80]
    judge = create_backbone("tiny", input_size=32, embedding_dim=16).eval()
    settings = attacks.InversionSettings(steps=60, batch_size=16, lr=3e-3, widths=(8, 16))
    plain = torch.nn.Identity()
    open_ = attacks.reconstruction_attack(plain, attacker, targets_a, targets_b, judge, settings)
    assert open_["loss_history"][-1] < 0.5 * open_["loss_history"][0]  # it learns
    noisy = create_protected(
        "dctdp", backbone="tiny", input_size=32, embedding_dim=8, budget_mean=0.002
    )
    shut = attacks.reconstruction_attack(noisy, attacker, targets_a, targets_b, judge, settings)
    assert open_["psnr"] > 20 and open_["psnr"] > shut["psnr"] + 5
    assert open_["ssim"] > shut["ssim"] + 0.2
    assert 0 <= shut["identification"] <= 1 and shut["chance"] == pytest.approx(1 / 16)

    vis = attacks.visual_attack(plain, targets_b)
    assert vis["psnr"] == pytest.approx(100.0) and vis["ssim"] == pytest.approx(1.0, abs=1e-6)
    duet = create_protected(
        "duetface", backbone="tiny", input_size=32, embedding_dim=8, client_params={"scale": 1}
    )
    seen = attacks.visual_attack(duet, targets_b)  # high frequencies only: edges, no tones
    assert seen["psnr"] < 15 and seen["ssim"] < 0.9


# ------------------------------------------------------------------ training on shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from synthface.pipeline.world import make_world_dataset

    root = tmp_path_factory.mktemp("privacy")
    make_world_dataset(root / "train", identities=6, per_identity=6, size=32)
    return root


def _train(shards, out, protection: str, kwargs: dict, **model):
    from synthface.recognition.config import TrainConfig
    from synthface.recognition.training import train

    cfg = validate_config(
        {
            "data": {
                "train": str(shards / "train"),
                "batch_size": 8,
                "num_workers": 0,
                "shuffle_buffer": 64,
            },
            "model": {
                "backbone": model.get("backbone", "tiny"),
                "input_size": 32,
                "embedding_dim": model.get("dim", 32),
                "params": model.get("params", {}),
                "protection": {"name": protection, "params": kwargs},
            },
            "head": {"name": "arcface", "params": {"scale": 16, "margin": 0.2}},
            "optim": {"lr": 0.05},
            "train": {"output_dir": str(out), "max_steps": 3, "device": "cpu"},
            "checkpoint": {"every_steps": 0},
            "logging": {"every_steps": 1, "progress": False},
        },
        TrainConfig,
    )
    result = train(cfg)
    assert result.completed and result.model_dir is not None
    assert np.isfinite(float(result.metrics["loss"]))
    return result.model_dir


def test_every_method_trains_a_few_steps_on_shards(shards, tmp_path):
    from synthface.recognition.checkpoint import load_recognizer

    client = {"scale": 1, "blocks": [1, 1, 1, 1]}
    runs = {
        "duetface_client": ({}, {"backbone": "mobilefacenet", "params": client}),
        "partialface": ({"repeats": 1}, {}),
        "dctdp": ({"budget_mean": 1.0, "noise_lr_scale": 10.0}, {}),
        "minusface_residue": ({"generator_widths": [8, 16]}, {}),
        "slerpface": ({"group_size": 8}, {"dim": 32}),
    }
    dirs = {name: _train(shards, tmp_path / name, name, p, **m) for name, (p, m) in runs.items()}
    dirs["duetface"] = _train(
        shards,
        tmp_path / "duetface",
        "duetface",
        {"client_params": client, "client_checkpoint": str(dirs["duetface_client"])},
    )
    dirs["minusface"] = _train(
        shards,
        tmp_path / "minusface",
        "minusface",
        {"generator_widths": [8, 16], "residue_checkpoint": str(dirs["minusface_residue"])},
    )
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    for name, path in dirs.items():
        model = load_recognizer(path)  # rebuilt from the spec, without the earlier stage
        assert model.spec["protection"] == name
        emb = model(x)
        assert emb.shape[0] == 2 and torch.isfinite(emb).all()
        assert torch.equal(emb, model(x))  # eval randomness is seeded

    # the frozen halves did not move in their second stage
    client_model = load_recognizer(dirs["duetface_client"])
    duet = load_recognizer(dirs["duetface"])
    for k, v in client_model.state_dict().items():
        assert torch.equal(v, duet.client.state_dict()[k]), k
    residue = load_recognizer(dirs["minusface_residue"])
    minus = load_recognizer(dirs["minusface"])
    for k, v in residue.generator_net.state_dict().items():
        assert torch.equal(v, minus.generator_net.state_dict()[k]), k
    # DCTDP's noise parameters trained in their own group
    dctdp = load_recognizer(dirs["dctdp"])
    assert float(dctdp.rho.detach().abs().max()) > 0 and float(dctdp.mu.detach().abs().max()) > 0


def test_protection_errors_are_one_line():
    with pytest.raises(ConfigError, match="unknown protection 'duetfac'"):
        create_protected("duetfac", backbone="tiny", input_size=32)
    with pytest.raises(ConfigError, match="budget_mean must be > 0"):
        create_protected("dctdp", backbone="tiny", input_size=32, budget_mean=0)
    with pytest.raises(ConfigError, match="unexpected keyword argument 'budget'"):
        create_protected("dctdp", backbone="tiny", input_size=32, budget=2)
    with pytest.raises(ConfigError, match="not an iResNet"):
        create_protected("duetface", backbone="mobilefacenet", input_size=32)


def test_dctdp_noise_parameters_are_not_decayed_and_learn_at_their_own_rate():
    from synthface.recognition.training.optim import param_groups

    model = create_protected(
        "dctdp", backbone="tiny", input_size=16, embedding_dim=8, noise_lr_scale=10.0
    )
    groups = param_groups(model, weight_decay=5e-4, decay_all=True)
    noise = {id(model.rho), id(model.mu)}
    (group,) = [g for g in groups if {id(p) for p in g["params"]} & noise]
    assert {id(p) for p in group["params"]} == noise
    assert group["weight_decay"] == 0.0 and group["lr_scale"] == 10.0
    decayed = [p for g in groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(id(p) not in noise for p in decayed)


def test_a_second_stage_is_retrained_when_its_first_stage_changes(tmp_path):
    """The second stage names its first by path: its key must follow the first's key."""
    import json

    from synthface.recognition.config import TrainConfig
    from synthface.recognition.privacy import benchmark

    stage = TrainConfig.model_validate(
        {"data": {"train": str(tmp_path)}, "train": {"output_dir": str(tmp_path / "s2")}}
    )
    out = tmp_path / "s2"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text('{"format": "test"}')
    key = benchmark._stage_key(stage, "first-a")
    (out / "train.json").write_text(json.dumps({"key": key, "steps": 1}))
    assert benchmark._finished(stage, "first-a") is not None
    assert benchmark._finished(stage, "first-b") is None


def test_a_changed_stage_starts_over_instead_of_resuming_the_old_run(shards, tmp_path):
    """The trainer resumes any checkpoint of the same architecture; the benchmark must not."""
    from safetensors.torch import load_file

    from synthface.recognition.config import TrainConfig
    from synthface.recognition.privacy import benchmark

    def stage(lr: float) -> TrainConfig:
        return validate_config(
            {
                "data": {"train": str(shards / "train"), "batch_size": 8, "num_workers": 0},
                "model": {"backbone": "tiny", "input_size": 32, "embedding_dim": 16},
                "optim": {"lr": lr},
                "train": {"output_dir": str(tmp_path / "s"), "max_steps": 3, "device": "cpu"},
                "checkpoint": {"every_steps": 1},
                "logging": {"every_steps": 1, "progress": False},
            },
            TrainConfig,
            "stage",
        )

    logs: list[str] = []
    weights = tmp_path / "s" / "model" / "model.safetensors"
    first = benchmark.train_stage(stage(0.05), log=logs.append)
    old = load_file(weights)
    # another schedule: its run must not continue the finished checkpoint at step 3
    second = benchmark.train_stage(stage(0.01), log=logs.append)
    new = load_file(weights)
    assert second["key"] != first["key"] and second["steps"] == 3
    assert any("starting over" in line for line in logs)
    assert any(not torch.equal(old[k], new[k]) for k in old)
    logs.clear()
    assert benchmark.train_stage(stage(0.01), log=logs.append)["key"] == second["key"]
    assert logs and "skipped" in logs[0]


# ------------------------------------------------------------------ benchmark plans and table


def _privacy_config(root, methods, out=None, **extra):
    from synthface.recognition.privacy.config import PrivacyBenchmarkConfig

    data = {
        "output_dir": str((out or root) / "run"),
        "recipe": str(ROOT / "configs" / "recognition" / "world_tiny.yaml"),
        "recipe_overrides": ["model.input_size=32", "train.epochs=2"],
        "train_data": str(root / "train"),
        "protocols": [str(root / "pairs" / "lfw.bin")],
        "methods": methods,
        "attack": {"data": str(root / "train"), "targets": str(root / "pairs" / "lfw.bin")},
        **extra,
    }
    return validate_config(data, PrivacyBenchmarkConfig, "privacy.yaml")


def test_stage_plans_are_the_documented_ones(shards, tmp_path):
    from synthface.recognition.privacy.benchmark import stage_configs

    cfg = _privacy_config(
        shards,
        [
            {"name": "unprotected"},
            {
                "name": "duetface",
                "protection": "duetface",
                "params": {"client_params": {"scale": 1}},
            },
            {"name": "minusface", "protection": "minusface"},
            {"name": "partialface", "protection": "partialface", "params": {"repeats": 3}},
            {"name": "slerpface", "protection": "slerpface"},
        ],
        out=tmp_path,
    )
    plans = {m.name: stage_configs(cfg, m, roi=None) for m in cfg.methods}
    names = {k: [n for n, _ in v] for k, v in plans.items()}
    assert names == {"unprotected": ["model"], "duetface": ["stage1", "stage2"],
                     "minusface": ["stage1", "stage2"], "partialface": ["model"],
                     "slerpface": ["model"]}  # fmt: skip
    ((_, plain),) = plans["unprotected"]
    assert plain.model.protection is None and plain.train.output_dir.endswith("unprotected/model")
    client, server = (s for _, s in plans["duetface"])
    assert client.model.protection.name == "duetface_client"
    assert client.model.backbone == "mobilefacenet"
    assert server.model.protection.params["client_checkpoint"] == str(
        tmp_path / "run" / "methods" / "duetface" / "stage1" / "model"
    )
    residue, minus = (s for _, s in plans["minusface"])
    assert residue.model.protection.name == "minusface_residue"
    assert minus.model.protection.params["residue_checkpoint"].endswith("stage1/model")
    ((_, partial),) = plans["partialface"]
    assert partial.train.epochs == 3 * plain.train.epochs  # repeats per epoch
    # every stage shares the recipe's data and head
    for plan in plans.values():
        for _, stage in plan:
            assert stage.data.train == str(shards / "train") and stage.head == plain.head
    bad = _privacy_config(shards, [{"name": "unprotected"}, {"name": "slerpface",
                          "protection": "slerpface", "pretrain_params": {"x": 1}}],
                          out=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=r"methods.slerpface.pretrain_params: .*one stage"):
        stage_configs(bad, bad.methods[1], roi=None)

    # a longer second stage without touching the first: pretrain_overrides come last
    longer = {"name": "minusface", "protection": "minusface"}
    longer_cfg = _privacy_config(
        shards,
        [
            {"name": "unprotected"},
            longer | {"overrides": ["train.epochs=40"], "pretrain_overrides": ["train.epochs=2"]},
        ],
        out=tmp_path,
    )
    first, second = (s for _, s in stage_configs(longer_cfg, longer_cfg.methods[1], roi=None))
    assert (first.train.epochs, second.train.epochs) == (2, 40)
    assert first == residue.model_copy(update={"train": first.train})  # nothing else moved
    assert first.train == residue.train.model_copy(update={"epochs": 2})
    bad = _privacy_config(
        shards, [{"name": "unprotected", "pretrain_overrides": ["train.epochs=2"]}], out=tmp_path
    )
    with pytest.raises(ConfigError, match=r"unprotected.pretrain_overrides: .*one stage"):
        stage_configs(bad, bad.methods[0], roi=None)
    bad = _privacy_config(
        shards,
        [{"name": "unprotected"}, longer | {"pretrain_overrides": ["train.epochz=2"]}],
        out=tmp_path,
    )
    with pytest.raises(ConfigError, match=r"minusface\.pretrain_overrides.*epochz"):
        stage_configs(bad, bad.methods[1], roi=None)


def test_table_rows_are_measured_against_the_baseline_of_the_same_run(tmp_path):
    from synthface.recognition.privacy.benchmark import NEAR_CHANCE, table_rows

    cfg = _privacy_config(
        tmp_path,
        [{"name": "unprotected"}, {"name": "close", "protection": "dctdp"},
         {"name": "far", "protection": "dctdp"}, {"name": "leaky", "protection": "dctdp"}],
    )  # fmt: skip

    def result(acc: float, ident: float) -> dict:
        rec = {"psnr": 11.0, "ssim": 0.2, "identification": ident, "chance": 0.01}
        return {"train": {"steps": 5, "seconds": 1.0}, "eval": {"lfw": {"accuracy": acc}},
                "attack": {"visual": None, "reconstruction": rec}}  # fmt: skip

    rows = table_rows(cfg, {
        "unprotected": result(0.90, 0.50),
        "close": result(0.895, NEAR_CHANCE * 0.01),   # -0.5 point, at the near-chance bound
        "far": result(0.85, 0.01),                    # -5 points
        "leaky": result(0.90, 0.30),                  # accurate but identifiable
    })  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert [r["method"] for r in rows] == ["unprotected", "close", "far", "leaky"]
    assert by["unprotected"]["delta_acc"] == 0 and not by["unprotected"]["goal_met"]
    assert by["close"]["delta_acc"] == pytest.approx(-0.5) and by["close"]["goal_met"]
    assert by["far"]["delta_acc"] == pytest.approx(-5.0) and not by["far"]["goal_met"]
    assert not by["leaky"]["goal_met"] and by["leaky"]["recon_identification"] == 30.0
    assert by["close"]["acc_lfw"] == 89.5 and by["close"]["chance"] == 1.0


def test_the_gpu_config_validates_and_every_row_builds_at_112():
    """bench/gpu/privacy_112.yaml cannot run here; its rows must at least build."""
    from synthface.pipeline.config import apply_overrides, load_config
    from synthface.recognition.privacy.config import PrivacyBenchmarkConfig

    cfg = load_config(ROOT / "bench/gpu/privacy_112.yaml", PrivacyBenchmarkConfig)
    assert Path(cfg.recipe).is_file() and cfg.device == "cuda"
    model = apply_overrides(
        {"model": {}}, [o for o in cfg.recipe_overrides if o.startswith("model.")]
    )
    for spec in cfg.methods:
        if spec.protection is None:
            continue
        local = apply_overrides(model, list(spec.overrides))["model"]
        net = create_protected(spec.protection, backbone=local["backbone"], input_size=112,
                               embedding_dim=local["embedding_dim"], **spec.params)  # fmt: skip
        assert net.embedding_dim == local["embedding_dim"], spec.name


def test_methods_train_through_the_qc_view_of_a_generated_set(shards, tmp_path):
    """train_view (default qc): used where train_data has it, and part of every stage
    key; required in a QC-audited set; data QC never saw (the world) is read whole."""
    import json
    import shutil

    from synthface.pipeline.qc.views import write_identity_view
    from synthface.recognition.privacy.benchmark import _stage_key, stage_configs

    methods = [{"name": "unprotected"}]
    world = _privacy_config(shards, methods, out=tmp_path)
    ((_, whole),) = stage_configs(world, world.methods[0], roi=None)
    assert whole.data.view is None  # the world has no views

    generated = tmp_path / "generated"
    shutil.copytree(shards / "train", generated / "train")
    manifest = generated / "train" / "dataset.json"
    data = json.loads(manifest.read_text())
    split = next(iter(data["splits"]))
    data["splits"][split]["extra"] = {"qc": {"flagged_identities": {}}}  # QC-audited
    manifest.write_text(json.dumps(data))
    cfg = _privacy_config(generated, methods, out=tmp_path / "g")
    with pytest.raises(InputError, match=r"train_view: .*views/qc.json: no such view"):
        stage_configs(cfg, cfg.methods[0], roi=None)

    write_identity_view(generated / "train", "qc", split=split, excluded_identities={1: ["leak"]},
                        criteria={})  # fmt: skip
    ((_, viewed),) = stage_configs(cfg, cfg.methods[0], roi=None)
    assert viewed.data.view == "qc"
    off = _privacy_config(generated, methods, out=tmp_path / "g", train_view=None)
    ((_, unviewed),) = stage_configs(off, off.methods[0], roi=None)
    assert unviewed.data.view is None
    assert _stage_key(viewed, None) != _stage_key(unviewed, None)
