"""Pieces of the training stage that need no data: config, schedule, optimizer groups,
augmentations."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from synthface.pipeline.config import validate_config
from synthface.pipeline.errors import ConfigError
from synthface.recognition import augment as A
from synthface.recognition.config import AugmentConfig, ScheduleConfig, TrainConfig
from synthface.recognition.training.optim import LRSchedule, build_optimizer, param_groups


def _gen(seed: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _images(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=_gen(123))


# ------------------------------------------------------------------ config


def test_config_rejects_unknown_and_invalid_keys():
    with pytest.raises(ConfigError, match=r"optim.momentun: unknown key"):
        validate_config({"data": {"train": "x"}, "optim": {"momentun": 0.9}}, TrainConfig)
    with pytest.raises(ConfigError, match=r"data.batch_size: must be > 0"):
        validate_config({"data": {"train": "x", "batch_size": 0}}, TrainConfig)
    with pytest.raises(ConfigError, match=r"needs milestones"):
        validate_config({"data": {"train": "x"}, "schedule": {"kind": "step"}}, TrainConfig)
    with pytest.raises(ConfigError, match=r"fp16.*CUDA"):
        validate_config(
            {"data": {"train": "x"}, "train": {"device": "cpu", "mixed_precision": "fp16"}},
            TrainConfig,
        )


def test_config_defaults_are_the_arcface_recipe():
    cfg = validate_config({"data": {"train": "x"}}, TrainConfig)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.momentum) == ("sgd", 0.1, 0.9)
    assert cfg.optim.weight_decay == 5e-4 and cfg.optim.decay_norm_and_bias
    assert (cfg.model.backbone, cfg.model.input_size, cfg.head.name) == ("ir50", 112, "arcface")


# ------------------------------------------------------------------ schedule and optimizer


def test_polynomial_schedule_with_warmup():
    sched = LRSchedule(ScheduleConfig(kind="polynomial", warmup_epochs=1, power=2.0), 110, 10.0)
    assert sched.warmup_steps == 10
    assert [sched.factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert sched.factor(10) == pytest.approx(1.0)
    assert sched.factor(60) == pytest.approx(0.25)  # (1 - 50/100)^2
    assert sched.factor(109) == pytest.approx(0.01**2)
    factors = [sched.factor(s) for s in range(10, 110)]
    assert all(b <= a for a, b in itertools.pairwise(factors))


def test_step_and_cosine_schedules():
    step = LRSchedule(ScheduleConfig(kind="step", milestones=[2, 3], gamma=0.1), 40, 10.0)
    assert [step.factor(s) for s in (0, 19, 20, 29, 30, 39)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01]
    )
    cos = LRSchedule(ScheduleConfig(kind="cosine", min_lr_ratio=0.1), 100, 10.0)
    assert cos.factor(0) == pytest.approx(1.0)
    assert cos.factor(50) == pytest.approx(0.55)
    assert cos.factor(99) == pytest.approx(0.1, abs=1e-3)


def test_no_weight_decay_on_norm_and_bias():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.PReLU(4), nn.Linear(4, 2))
    groups = param_groups(model, 5e-4, decay_all=False)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 5e-4 and groups[1]["weight_decay"] == 0.0
    assert decayed == {id(model[0].weight), id(model[3].weight)}
    assert len(groups[1]["params"]) == 5  # conv bias, BN weight+bias, PReLU, linear bias

    from synthface.recognition.config import OptimConfig

    opt = build_optimizer(model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1))
    assert isinstance(opt, torch.optim.AdamW)  # default: decay everything, as arcface_torch
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters()))
    opt = build_optimizer(
        model, OptimConfig(name="adamw", lr=1e-3, weight_decay=0.1, decay_norm_and_bias=False)
    )
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


# ------------------------------------------------------------------ augmentations


def test_disabled_augmenter_is_identity():
    cfg = AugmentConfig(flip={"p": 0.0})
    aug = A.Augmenter(cfg)
    assert not aug.active
    x = _images()
    assert torch.equal(aug(x.clone(), _gen()), x)


def test_flip_mirrors_exactly_the_chosen_samples():
    x = _images(64)
    y = A.hflip(x, 0.5, _gen(1))
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(y[i], x[i]) for i in range(64)])
    assert bool((flipped | kept).all())
    assert 16 < int(flipped.sum()) < 48
    assert torch.equal(A.hflip(x, 1.0, _gen()), x.flip(-1))


def test_crop_keeps_one_box_in_place_and_blacks_out_the_rest():
    x = _images(16) * 0.9 + 0.05  # strictly positive, so zeros can only come from the crop
    y = A.crop_in_place(x, 1.0, 0.2, 0.75, 4 / 3, _gen(2))
    for i in range(16):
        kept = (y[i] != 0).all(0)
        rows, cols = kept.any(1).nonzero().flatten(), kept.any(0).nonzero().flatten()
        box = kept[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert bool(box.all())  # one rectangle
        assert int(kept.sum()) == box.numel()
        assert 0.1 * 32 * 32 <= box.numel() <= 32 * 32
        assert torch.equal(y[i][:, kept], x[i][:, kept])  # not moved or resized


def test_resolution_drops_blur_but_keep_size_and_brightness():
    x = _images(16)
    for y in (
        A.random_scale(x, 1.0, 0.25, 4, _gen(3)),
        A.low_resolution(x, 1.0, 0.2, 4, _gen(3)),
    ):
        assert y.shape == x.shape
        assert (y - x).abs().mean() > 0.05  # detail is gone
        # high-frequency energy drops: neighbouring pixels become similar
        assert (y.diff(dim=-1).abs().mean()) < 0.8 * (x.diff(dim=-1).abs().mean())
        assert y.mean() == pytest.approx(float(x.mean()), abs=0.02)
    # scale level 1.0 is an exact no-op
    same = A.down_up(x, torch.ones(16, dtype=torch.bool), torch.zeros(16, dtype=torch.long), [1.0])
    assert torch.equal(same, x)


def test_photometric_changes_colour_in_range():
    x = _images(32)
    y = A.photometric(x, 1.0, 0.5, 0.5, 0.5, _gen(4))
    assert y.min() >= 0 and y.max() <= 1
    per_sample = (y - x).abs().mean((1, 2, 3))
    assert bool((per_sample > 1e-3).all())
    assert torch.equal(A.photometric(x, 0.0, 0.5, 0.5, 0.5, _gen(4)), x)


def test_augmenter_is_deterministic_per_seed():
    cfg = AugmentConfig(
        flip={"p": 0.5},
        random_scale={"p": 0.3},
        crop={"p": 0.3},
        low_res={"p": 0.3},
        photometric={"p": 0.3},
    )
    aug = A.Augmenter(cfg)
    x = _images()
    assert torch.equal(aug(x, _gen(7)), aug(x, _gen(7)))
    assert not torch.equal(aug(x, _gen(7)), aug(x, _gen(8)))
