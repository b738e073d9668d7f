"""Small classifiers for CPU-scale experiments. All take inputs in ``[0, 1]``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "ConvNet", "LogisticRegression", "SmallCNN"]


class LogisticRegression(nn.Module):
    """Multinomial logistic regression on flattened inputs: ``logits = W·vec(x) + b``."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2:
            raise ValueError(
                f"need in_features >= 1 and num_classes >= 2, got {in_features}, {num_classes}"
            )
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))


_ACTIVATIONS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class MLP(nn.Module):
    """One hidden layer; tanh by default (smooth, so Hessian-vector products are informative),
    or ``activation="sigmoid"`` (the 784-300-10 network of Shen & Chen's hyper-cleaning) or
    ``"relu"``."""

    def __init__(
        self, in_features: int, num_classes: int, hidden: int = 32, activation: str = "tanh"
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or hidden < 1:
            raise ValueError(
                f"need in_features, hidden >= 1 and num_classes >= 2, got {in_features}, "
                f"{hidden}, {num_classes}"
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {', '.join(_ACTIVATIONS)}; got {activation!r}"
            )
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            _ACTIVATIONS[activation](),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two 3×3 conv blocks (``width`` and ``2·width`` channels, ReLU, 2×2 max-pool) and two
    linear layers (``4·width`` hidden units)."""

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, width: int = 32
    ) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * side * side, 4 * width),
            nn.ReLU(),
            nn.Linear(4 * width, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class ConvNet(nn.Module):
    """A VGG-style CNN with BatchNorm for CPU-scale image work.

    One stage per entry of ``widths``: ``convs_per_stage`` blocks of 3×3 conv, BatchNorm,
    ReLU, then 2×2 max-pool; global average pooling and one linear layer. Any input size at
    least ``2**len(widths)`` wide works.
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_stage: int = 1,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or convs_per_stage < 1 or num_classes < 2:
            raise ValueError(
                f"need positive widths, convs_per_stage >= 1 and num_classes >= 2; got "
                f"{widths}, {convs_per_stage}, {num_classes}"
            )
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                channels = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean(dim=(2, 3)))
