"""Perturbation generators: ``x ↦ δ = ε·tanh(z(x))``, so ``‖δ‖∞ ≤ ε`` by construction.

Both are fully convolutional (any input size divisible by the total down-sampling), take images
in ``[0, 1]`` and return a perturbation of the same shape. The poisoned image is
``clamp(x + δ, 0, 1)`` (applied by the game, not here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from stackelberg.checks import check_epsilon

__all__ = [
    "EncoderDecoderGenerator",
    "LabelConditionedGenerator",
    "UNetGenerator",
    "generate",
    "is_conditional",
]


def is_conditional(generator: Any) -> bool:
    """Whether ``generator`` also takes the labels (``g(x, y)``: it says so with a true
    ``conditional`` attribute, as ``LabelConditionedGenerator`` does)."""
    return bool(getattr(generator, "conditional", False))


def generate(
    generator: Any,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    conditional: bool | None = None,
) -> Tensor:
    """The one way the package calls a generator: ``g(x)``, or ``g(x, y)`` for a
    label-conditioned one (``labels`` is then required, and ignored otherwise).
    ``conditional`` overrides ``is_conditional(generator)``, for a functional view of a
    generator that does not carry the attribute."""
    if conditional is None:
        conditional = is_conditional(generator)
    if not conditional:
        return generator(x)
    if labels is None:
        raise ValueError("this generator is label-conditioned: pass the labels")
    return generator(x, labels)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class _BoundedGenerator(nn.Module):
    """Shared checks and the ``ε·tanh`` head.

    With ``achromatic`` the head is ``δ_c = ε·tanh(mean_c' z_c'(x))`` for every channel ``c``:
    one gray perturbation, the same in R, G and B, still within ``‖δ‖∞ ≤ ε``. Its BT.601 luma
    is ``(0.299 + 0.587 + 0.114)·δ_c = δ_c``, so a victim's grayscale conversion keeps all of
    it, and its JPEG chroma (Cb and Cr, whose weights sum to zero) is zero, so JPEG's chroma
    subsampling and coarser chroma quantization do not touch it: only the luma quantization
    does. An ordinary head spends part of the budget on colour, which grayscale removes and
    JPEG compresses hardest (image shortcut squeezing, Liu, Zhao & Larson 2023). What that
    buys against which defense is measured in ``docs/results/defense-survival/``.
    """

    epsilon: float
    in_channels: int
    downsampling: int
    achromatic: bool = False

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects images of shape (N, {self.in_channels}, H, W), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[-1] % self.downsampling or x.shape[-2] % self.downsampling:
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {self.downsampling}, "
                f"got {tuple(x.shape[-2:])} (pad or tile the image)"
            )

    def bound(self, z: Tensor) -> Tensor:
        if self.achromatic:
            z = z.mean(1, keepdim=True).expand_as(z)
        return self.epsilon * torch.tanh(z)

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.bound(self.logits(x))

    def extra_repr(self) -> str:
        return f"epsilon={self.epsilon:.6g}" + (", achromatic=True" if self.achromatic else "")


class UNetGenerator(_BoundedGenerator):
    """The U-Net generator of DeepConfuse / GUE.

    Encoder: double-conv blocks (3×3 conv, BatchNorm, ReLU, twice) with widths
    ``3 → 64 → 128 → 256 → 512``, 2×2 average pooling between them; decoder: bilinear
    up-sampling, concatenation with the encoder's feature map of the same size (skip
    connection), double conv; head: 1×1 conv + BatchNorm, then ``ε·tanh``.

    Args:
        epsilon: the ℓ∞ budget ε.
        in_channels: image channels.
        widths: channel widths of the encoder levels (the paper's ``(64, 128, 256, 512)``;
            ``(16, 32, 64)`` is a CPU-sized version).
        achromatic: one perturbation shared by the channels (see ``bound``).
    """

    def __init__(
        self,
        epsilon: float,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        *,
        achromatic: bool = False,
    ) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.achromatic = bool(achromatic)
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or min(widths) < 1:
            raise ValueError(f"widths needs >= 2 positive entries, got {widths}")
        self.in_channels = in_channels
        self.downsampling = 2 ** (len(widths) - 1)
        self.down = nn.ModuleList(
            _double_conv(c_in, c_out)
            for c_in, c_out in zip((in_channels, *widths[:-1]), widths, strict=True)
        )
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in range(len(widths) - 1)
        )
        self.head = nn.Sequential(
            nn.Conv2d(widths[0], in_channels, 1, bias=False), nn.BatchNorm2d(in_channels)
        )

    def logits(self, x: Tensor) -> Tensor:
        """The pre-activation ``z(x)``; the perturbation is ``ε·tanh(z(x))``."""
        self._check_input(x)
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i:
                h = F.avg_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        for i in reversed(range(len(self.up))):
            h = F.interpolate(h, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            h = self.up[i](torch.cat([h, skips[i]], dim=1))
        return self.head(h)


class EncoderDecoderGenerator(_BoundedGenerator):
    """A small encoder-decoder for CPU work (and DeepConfuse's generator shape).

    Two stride-2 3×3 convs (``width``, ``2·width`` channels) down, one residual 3×3 block at
    1/4 resolution, two 4×4 stride-2 transposed convs up, a 3×3 conv to the image channels,
    then ``ε·tanh`` (``achromatic``: one perturbation shared by the channels, see
    ``bound``). BatchNorm and ReLU after every hidden layer.
    """

    def __init__(
        self, epsilon: float, in_channels: int = 3, width: int = 32, *, achromatic: bool = False
    ) -> None:
        super().__init__()
        self.epsilon = check_epsilon(epsilon)
        self.achromatic = bool(achromatic)
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.in_channels = in_channels
        self.downsampling = 4

        def layer(conv: nn.Module, channels: int) -> nn.Sequential:
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

        w = width
        self.encoder = nn.Sequential(
            layer(nn.Conv2d(in_channels, w, 3, stride=2, padding=1, bias=False), w),
            layer(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1, bias=False), 2 * w),
        )
        self.middle = layer(nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), 2 * w)
        self.decoder = nn.Sequential(
            layer(nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1, bias=False), w),
            layer(nn.ConvTranspose2d(w, w, 4, stride=2, padding=1, bias=False), w),
            nn.Conv2d(w, in_channels, 3, padding=1),
        )

    def logits(self, x: Tensor) -> Tensor:
        """The pre-activation ``z(x)``; the perturbation is ``ε·tanh(z(x))``."""
        self._check_input(x)
        h = self.encoder(x)
        h = h + self.middle(h)
        return self.decoder(h)


class LabelConditionedGenerator(nn.Module):
    """``δ = ε·tanh(z(x) + P_y)``: a generator's pre-activation plus a learned pattern per class.

    ``P`` is ``(K, C, s, s)``, zero at the start (so the generator starts as ``base``), and is
    resized bilinearly to the image size, so any image size works. The leader then sees the
    labels of the data it protects, as class-wise error-minimizing noise (Huang et al. 2021) and
    DeepConfuse's label-specific variant do; the pattern gives it a direct route to a
    class-consistent shortcut. Call it as ``generator(x, y)``. An ``achromatic`` base makes
    the sum achromatic: ``δ_c = ε·tanh(mean_c' (z + P_y)_c')``.

    Args:
        base: a ``UNetGenerator`` or ``EncoderDecoderGenerator`` (its ε is used).
        num_classes: ``K``.
        pattern_size: ``s``.
    """

    conditional = True

    def __init__(self, base: _BoundedGenerator, num_classes: int, pattern_size: int = 8) -> None:
        super().__init__()
        if not isinstance(base, _BoundedGenerator):
            raise TypeError(
                f"base must be a UNet or encoder-decoder generator, got {type(base).__name__}"
            )
        if num_classes < 2 or pattern_size < 1:
            raise ValueError(
                f"need num_classes >= 2 and pattern_size >= 1, got {num_classes}, {pattern_size}"
            )
        self.base = base
        self.epsilon = base.epsilon
        self.patterns = nn.Parameter(
            torch.zeros(num_classes, base.in_channels, pattern_size, pattern_size)
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if y.shape != x.shape[:1]:
            raise ValueError(
                f"need one label per image: {tuple(x.shape[:1])}, got {tuple(y.shape)}"
            )
        pattern = F.interpolate(
            self.patterns, size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return self.base.bound(self.base.logits(x) + pattern[y])
