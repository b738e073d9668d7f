"""The named model builders of the GUE application: the generators (the leader) and the
classifiers (the follower, the victims), by the names presets, checkpoints and the command
line use."""

from __future__ import annotations

from torch import nn

from stackelberg.models import (
    ConvNet,
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    ResNet18,
    UNetGenerator,
)

__all__ = ["CLASSIFIERS", "GENERATORS", "build_classifier", "build_generator"]

GENERATORS = ("unet", "unet-small", "encoder-decoder")
CLASSIFIERS = ("resnet18", "convnet-wide", "convnet", "convnet-lite", "convnet-small")


def build_generator(
    name: str,
    epsilon: float,
    in_channels: int,
    *,
    num_classes: int | None = None,
    achromatic: bool = False,
) -> nn.Module:
    """``unet`` (widths 64–512, the paper's), ``unet-small`` (16–64) or ``encoder-decoder``;
    wrapped in a ``LabelConditionedGenerator`` when ``num_classes`` is given; ``achromatic``:
    one perturbation shared by the channels (``UNetGenerator.bound``)."""
    base: UNetGenerator | EncoderDecoderGenerator
    if name == "unet":
        base = UNetGenerator(epsilon, in_channels, achromatic=achromatic)
    elif name == "unet-small":
        base = UNetGenerator(epsilon, in_channels, widths=(16, 32, 64), achromatic=achromatic)
    elif name == "encoder-decoder":
        base = EncoderDecoderGenerator(epsilon, in_channels, achromatic=achromatic)
    else:
        raise ValueError(f"generator must be one of {', '.join(GENERATORS)}; got {name!r}")
    return base if num_classes is None else LabelConditionedGenerator(base, num_classes)


def build_classifier(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """``resnet18`` (CIFAR ResNet-18), ``convnet-wide`` (widths 64/128/256, two convs per
    stage), ``convnet`` (32/64/128, two convs per stage), ``convnet-lite`` (32/64/128, one
    conv per stage) or ``convnet-small`` (16/32/64, one conv per stage)."""
    if name == "resnet18":
        return ResNet18(num_classes, in_channels)
    if name == "convnet-wide":
        return ConvNet(in_channels, num_classes, widths=(64, 128, 256), convs_per_stage=2)
    if name == "convnet":
        return ConvNet(in_channels, num_classes, widths=(32, 64, 128), convs_per_stage=2)
    if name == "convnet-lite":
        return ConvNet(in_channels, num_classes, widths=(32, 64, 128), convs_per_stage=1)
    if name == "convnet-small":
        return ConvNet(in_channels, num_classes, widths=(16, 32, 64), convs_per_stage=1)
    raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}; got {name!r}")
