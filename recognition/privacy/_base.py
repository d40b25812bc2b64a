"""What every protection method shares: the client/server contract and the registry.

A protected recognizer is a :class:`~synthface.recognition.backbones.Backbone`: it takes the
trainer's RGB input (N x 3 x S x S in [-1, 1]) and returns an embedding, so the existing
training loop, validation callback, checkpoints (``save_recognizer``/``load_recognizer``) and
evaluation use it unchanged. What it adds is the split the attacks need:

- ``server_view(x)``: what leaves the client, i.e. everything the server (or an attacker
  holding the server's inputs) sees;
- ``visual(x)``: that view looked at as an image, the *visual* attack (missing frequency
  channels zero-filled, the rest put back where they came from, inverse block-DCT);
- ``forward_train(x, labels)``: the trainer's extension point for objectives beside the margin
  loss (MinusFace's regeneration term) and label-dependent inputs (PartialFace's per-identity
  channel subsets);
- ``lr_scales()``: learning-rate factors of parameter groups (DCTDP's noise parameters).

Randomness of a protection (channel subsets, permutations, Laplace noise, keys) comes from
torch's global generator in training, whose state the trainer checkpoints, and from a
generator seeded with ``eval_seed`` at every call in eval mode, so an evaluation is a pure
function of the weights and the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from synthface.pipeline.errors import ConfigError
from synthface.pipeline.registry import Registry
from synthface.recognition.backbones._base import Backbone, as_hw
from synthface.recognition.privacy import bdct

SPEC_NAME = "protected"


@dataclass(frozen=True)
class PretrainStage:
    """A model trained before this one; its exported directory is passed as ``argument``."""

    protection: str
    argument: str
    backbone: str
    backbone_params: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


class ProtectedRecognizer(Backbone):
    """Base class; subclasses define the protection and the server network.

    Args:
        input_size: side of the RGB input the client receives.
        embedding_dim: size of the embedding the margin head trains.
        eval_seed: seed of the protection's randomness in eval mode.
    """

    #: constructor arguments that only initialise weights (paths of earlier stages); a
    #: checkpoint is rebuilt without them, its own weights replace what they loaded
    init_only: ClassVar[tuple[str, ...]] = ()
    #: the server's input is a template vector, not maps (decides which attacks apply)
    template_view: ClassVar[bool] = False

    def __init__(
        self, *, input_size: int | Sequence[int], embedding_dim: int, eval_seed: int = 0
    ) -> None:
        hw = as_hw(input_size)
        if hw[0] != hw[1]:
            raise ConfigError(f"protections take square inputs, got input_size {list(hw)}")
        super().__init__(hw, 3, embedding_dim)
        self.size = hw[0]
        self.eval_seed = int(eval_seed)

    # ---------------------------------------------------------------- stages

    @classmethod
    def pretrain_stage(
        cls, backbone: str, backbone_params: dict[str, Any], params: dict[str, Any]
    ) -> PretrainStage | None:
        """The stage to train first (DuetFace's client, MinusFace's generator), if any."""
        return None

    @classmethod
    def epoch_factor(cls, params: dict[str, Any]) -> float:
        """Epochs of this method per epoch of the recipe (PartialFace repeats its data)."""
        return 1.0

    # ---------------------------------------------------------------- randomness

    def generator(self, device: torch.device) -> torch.Generator | None:
        """``None`` in training (global RNG), a freshly seeded generator in eval mode."""
        if self.training:
            return None
        gen = torch.Generator(device=device)
        gen.manual_seed(self.eval_seed)
        return gen

    # ---------------------------------------------------------------- interface

    def server_view(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """What the client sends: a tensor (maps N x C x h x w, or templates N x D)."""
        raise NotImplementedError

    def visual(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """The server's view as an RGB image in [-1, 1] (N x 3 x S x S), or ``None``."""
        return None

    def forward_train(
        self, x: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(embeddings, extra loss or None) for a training step; see the trainer's TrainModule."""
        return self(x), None

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name prefixes (relative to this module) -> learning-rate factors."""
        return {}

    def frozen_modules(self) -> list[nn.Module]:
        """Sub-modules loaded from an earlier stage and kept fixed (eval mode, no gradients)."""
        return []

    def train(self, mode: bool = True) -> ProtectedRecognizer:
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def freeze(self, module: nn.Module) -> nn.Module:
        for p in module.parameters():
            p.requires_grad_(False)
        return module.eval()


class InputNorm(nn.BatchNorm2d):
    """Per-channel batch normalisation of the server's input maps.

    Block-DCT coefficients differ in scale by three orders of magnitude (a DC value reaches
    1024, a high frequency of an up-sampled image a few units), which lets the largest
    channels dominate the first convolution's gradient. The reference feeds them raw; this
    project normalises them first (a deviation, documented in docs/privacy.md).
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)


def build_server(
    backbone: str,
    backbone_params: dict[str, Any],
    *,
    channels: int,
    size: int,
    embedding_dim: int,
) -> Backbone:
    """The server network: a registered backbone whose input conv takes ``channels`` maps."""
    from synthface.recognition.backbones import create_backbone

    if "input_channels" in backbone_params or "input_size" in backbone_params:
        raise ConfigError(
            "model.params: input_channels and input_size of a protected model's backbone "
            "follow from the protection; remove them"
        )
    return create_backbone(
        backbone,
        input_size=size,
        input_channels=channels,
        embedding_dim=embedding_dim,
        **backbone_params,
    )


def bdct_size(size: int, upsample: int) -> int:
    try:
        return bdct.map_size(size, upsample)
    except ValueError as exc:
        raise ConfigError(f"upsample: {exc}") from None


PROTECTIONS: Registry[type[ProtectedRecognizer]] = Registry("protection")


def create_protected(
    name: str,
    *,
    backbone: str = "ir18",
    backbone_params: dict[str, Any] | None = None,
    input_size: int | Sequence[int] = 112,
    embedding_dim: int = 512,
    **params: Any,
) -> ProtectedRecognizer:
    """Build the registered protection ``name`` around a backbone from the backbone registry.

    ``model.spec`` records everything needed to rebuild it from a checkpoint
    (:func:`rebuild_protected`).

    Raises:
        ConfigError: unknown protection (the message lists the known ones), an argument it
            does not take, or an invalid value.
    """
    cls = PROTECTIONS.get(name)
    backbone_params = dict(backbone_params or {})
    try:
        model = cls(
            backbone=backbone,
            backbone_params=backbone_params,
            input_size=input_size,
            embedding_dim=embedding_dim,
            **params,
        )
    except TypeError as exc:
        raise ConfigError(f"protection {name!r}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"protection {name!r}: {exc}") from None
    model.spec = {
        "name": SPEC_NAME,
        "protection": name,
        "backbone": backbone,
        "backbone_params": backbone_params,
        "input_size": list(as_hw(input_size)),
        "input_channels": 3,
        "embedding_dim": embedding_dim,
        **{k: _jsonable(v) for k, v in sorted(params.items())},
    }
    return model


def rebuild_protected(spec: dict[str, Any]) -> ProtectedRecognizer:
    """The architecture a checkpoint's spec describes, without its init-only arguments."""
    spec = dict(spec)
    spec.pop("name", None)
    spec.pop("input_channels", None)
    name = spec.pop("protection")
    cls = PROTECTIONS.get(name)
    for key in cls.init_only:
        spec.pop(key, None)
    model = create_protected(name, **spec)
    return model


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
