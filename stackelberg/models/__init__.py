"""Models: victims (logistic regression, MLP, small CNNs, CIFAR ResNet-18) and perturbation
generators (U-Net, encoder-decoder). All take images in ``[0, 1]``."""

from stackelberg.models.generators import (
    EncoderDecoderGenerator,
    LabelConditionedGenerator,
    UNetGenerator,
    generate,
    is_conditional,
)
from stackelberg.models.resnet import ResNet18
from stackelberg.models.small import MLP, ConvNet, LogisticRegression, SmallCNN

__all__ = [
    "MLP",
    "ConvNet",
    "EncoderDecoderGenerator",
    "LabelConditionedGenerator",
    "LogisticRegression",
    "ResNet18",
    "SmallCNN",
    "UNetGenerator",
    "generate",
    "is_conditional",
]
