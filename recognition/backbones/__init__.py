"""Backbone registry: ``create_backbone("ir50", input_size=112, input_channels=3)``.

Every backbone maps NCHW float input in [-1, 1] (RGB, or DCT channels) of a fixed
``input_size`` to an un-normalised ``N x embedding_dim`` feature. Registered names:
``ir18 ir34 ir50 ir100 ir200`` (arcface_torch iResNets), ``mobilefacenet``
(arcface_torch ``mbf``), ``tiny`` (a 4-block iResNet for tests and CPU runs) and
``afa`` (any of them with AFA's dual BatchNorms and fusing-weight read-outs,
``backbones/afa.py``; ``base`` names the wrapped backbone's spec).

Each registered constructor lists its keyword arguments explicitly so configs can be
checked against its signature before a run starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry
from synthface.recognition.backbones._base import Backbone, as_hw
from synthface.recognition.backbones.afa import AFABackbone, afa_backbone
from synthface.recognition.backbones.iresnet import ARCH_LAYERS, TINY_LAYERS, TINY_WIDTHS, IResNet
from synthface.recognition.backbones.mobilefacenet import MobileFaceNet

__all__ = [
    "BACKBONES",
    "AFABackbone",
    "Backbone",
    "IResNet",
    "MobileFaceNet",
    "create_backbone",
    "list_backbones",
]

BACKBONES: Registry[Backbone] = Registry("backbone")


def _iresnet(arch: str):
    def build(
        *,
        input_size: int | Sequence[int] = 112,
        input_channels: int = 3,
        embedding_dim: int = 512,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
        init: str = "arcface_torch",
    ) -> IResNet:
        return IResNet(
            ARCH_LAYERS[arch],
            input_size=input_size,
            input_channels=input_channels,
            embedding_dim=embedding_dim,
            dropout=dropout,
            zero_init_residual=zero_init_residual,
            init=init,
        )

    build.__name__ = arch
    build.__doc__ = (
        f"iResNet-{arch[2:]} (arcface_torch ``r{arch[2:]}``), stage depths {ARCH_LAYERS[arch]}."
    )
    return build


for _arch in ARCH_LAYERS:
    BACKBONES.register(_arch)(_iresnet(_arch))


@BACKBONES.register("tiny")
def tiny(
    *,
    input_size: int | Sequence[int] = 112,
    input_channels: int = 3,
    embedding_dim: int = 512,
    widths: Sequence[int] = TINY_WIDTHS,
    layers: Sequence[int] = TINY_LAYERS,
    dropout: float = 0.0,
    init: str = "kaiming",
) -> IResNet:
    """One block per stage, widths 16-128: seconds per epoch on a CPU, for tests.

    Not an arcface_torch model: Kaiming initialisation by default (the CPU recipe's
    measured numbers in docs/benchmarks.md use it); ``init="arcface_torch"`` for N(0, 0.1).
    """
    return IResNet(
        tuple(layers),
        tuple(widths),
        input_size=input_size,
        input_channels=input_channels,
        embedding_dim=embedding_dim,
        dropout=dropout,
        init=init,
    )


@BACKBONES.register("mobilefacenet")
def mobilefacenet(
    *,
    input_size: int | Sequence[int] = 112,
    input_channels: int = 3,
    embedding_dim: int = 512,
    blocks: Sequence[int] = (1, 4, 6, 2),
    scale: int = 2,
) -> MobileFaceNet:
    """arcface_torch ``mbf`` (blocks 1-4-6-2, width x2); ``scale=4, blocks=(2,8,12,4)`` = ``mbf_large``."""
    return MobileFaceNet(
        tuple(blocks),
        scale,
        input_size=input_size,
        input_channels=input_channels,
        embedding_dim=embedding_dim,
    )


@BACKBONES.register("afa")
def afa(
    *,
    input_size: int | Sequence[int] = 112,
    input_channels: int = 3,
    embedding_dim: int = 512,
    base: dict[str, Any],
    momentum: float = 0.05,
) -> AFABackbone:
    """``base`` (``{"name": ..., **arguments}``) with AFA's dual BatchNorms."""
    if not isinstance(base, dict) or "name" not in base:
        raise ValueError(f"afa: base must be a backbone spec with a 'name', got {base!r}")
    args = {k: v for k, v in base.items() if k != "name"}
    inner = create_backbone(
        base["name"],
        input_size=input_size,
        input_channels=input_channels,
        embedding_dim=embedding_dim,
        **args,
    )
    return afa_backbone(inner, momentum)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def create_backbone(
    name: str,
    *,
    input_size: int | Sequence[int] = 112,
    input_channels: int = 3,
    embedding_dim: int = 512,
    **kwargs: Any,
) -> Backbone:
    """Build a registered backbone; ``model.spec`` records how, for checkpoints.

    Raises:
        ConfigError: unknown name (the message lists the known ones), an argument the
            backbone does not take, or an invalid value.
    """
    hw = as_hw(input_size)
    build = BACKBONES.get(name)
    try:
        model = build(
            input_size=hw, input_channels=input_channels, embedding_dim=embedding_dim, **kwargs
        )
    except TypeError as exc:
        raise ConfigError(f"backbone {name!r}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"backbone {name!r}: {exc}") from None
    model.spec = {
        "name": name,
        "input_size": list(hw),
        "input_channels": input_channels,
        "embedding_dim": embedding_dim,
        **{k: _jsonable(v) for k, v in sorted(kwargs.items())},
    }
    return model


def list_backbones() -> list[str]:
    return BACKBONES.names()
