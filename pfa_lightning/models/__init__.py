"""Reference models for the paper's experiments, built by name with :func:`build`.

Example:
    >>> from pfa_lightning.models import build
    >>> model = build("resnet20", num_classes=10, width=0.25)
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from pfa_lightning.validation import check_choice, check_int, check_positive

from pfa_lightning.models.resnet import CifarResNet
from pfa_lightning.models.simplecnn import SimpleCNN
from pfa_lightning.models.vgg import VGG, VGG_CONFIGS

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    **{name: (lambda name=name, **kw: VGG(name, **kw)) for name in VGG_CONFIGS},
    "resnet20": lambda **kw: CifarResNet(20, **kw),
    "resnet32": lambda **kw: CifarResNet(32, **kw),
    "resnet56": lambda **kw: CifarResNet(56, **kw),
    "simplecnn": lambda **kw: SimpleCNN(**kw),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def build(name: str, num_classes: int = 10, in_channels: int = 3, width: float = 1.0, **kwargs) -> nn.Module:
    """Build a model by name.

    Args:
        name: one of :data:`MODEL_NAMES` (``vgg11/13/16/19``, ``resnet20/32/56``, ``simplecnn``).
        num_classes: size of the classifier output.
        in_channels: channels of the input images (3 for CIFAR, 1 for grey digits).
        width: multiplier applied to every layer's number of units (``0.25`` gives a tiny model).
        **kwargs: model-specific options (``input_size`` for VGG and SimpleCNN).

    Raises:
        PFAError: for an unknown name or a non-positive ``width``/``num_classes``/``in_channels``.
    """
    key = name.lower() if isinstance(name, str) else name
    check_choice("name", key, MODEL_NAMES)
    check_positive("width", width)
    check_int("num_classes", num_classes, 1)
    check_int("in_channels", in_channels, 1)
    return _REGISTRY[key](num_classes=num_classes, in_channels=in_channels, width=width, **kwargs)


def scaled(channels: int, width: float) -> int:
    """Number of units of a layer of ``channels`` units under the width multiplier."""
    return max(1, int(round(channels * width)))


__all__ = ["MODEL_NAMES", "VGG", "CifarResNet", "SimpleCNN", "build", "scaled"]
