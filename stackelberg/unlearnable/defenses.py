"""Victim-side defenses against availability poisons.

A ``Defense`` acts at two points of ``train_victim``:
once on the whole (uint8) training set before training, and on every augmented mini-batch.

- **Mixup** (Zhang et al. 2018): ``x = λx_i + (1 − λ)x_j``, soft label ``λy_i + (1 − λ)y_j``,
  ``λ ~ Beta(α, α)``.
- **Cutout** (DeVries & Taylor 2017): a ``size × size`` square (clipped at the border) at a
  uniformly random centre is set to zero.
- **CutMix** (Yun et al. 2019): a box of area ``(1 − λ)·HW``, ``λ ~ Beta(α, α)``, is pasted from
  another image of the batch; the label mixes by the box's actual area.
- **Adversarial training** (Madry et al. 2018): the batch is replaced by PGD adversarial
  examples of radius ``ε_a`` (``steps`` steps of ``2.5ε_a/steps``, random start, computed in
  eval mode so BatchNorm statistics see only the training inputs).
- **Grayscale** and **JPEG** squeezing (Liu, Zhao & Larson 2023, "Image shortcut squeezing"):
  the training set is converted once, to ITU-R BT.601 luma replicated over the channels, or
  through a JPEG encode/decode at ``quality`` (10). Grayscale also converts the test images
  (the victim's model expects gray inputs); JPEG leaves clean test images alone.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.nn import functional as F

from stackelberg.checks import check_epsilon
from stackelberg.games.adversarial import pgd_attack
from stackelberg.unlearnable.color import grayscale

__all__ = [
    "DEFENSES",
    "AdversarialTraining",
    "CutMix",
    "Cutout",
    "Defense",
    "Grayscale",
    "JPEGCompression",
    "Mixup",
    "make_defense",
]


class Defense:
    """No defense; subclasses override what they change.

    ``prepare_train`` / ``prepare_test`` map uint8 image sets ``(N, C, H, W)`` to uint8;
    ``batch(model, x, y, generator)`` maps a float batch in ``[0, 1]`` and hard labels to the
    inputs and targets (hard ``(N,)`` or soft ``(N, K)``) the victim's loss sees."""

    name = "none"

    def prepare_train(self, images: Tensor) -> Tensor:
        return images

    def prepare_test(self, images: Tensor) -> Tensor:
        return images

    def batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        return x, y


def _check_alpha(alpha: float) -> float:
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    return float(alpha)


def _beta(alpha: float, generator: torch.Generator) -> float:
    """One ``Beta(α, α)`` draw, reproducible from ``generator``."""
    seed = int(torch.randint(2**31 - 1, (), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


class _Mixing(Defense):
    """Shared by Mixup and CutMix: one Beta(α, α) draw per batch, a random partner per image."""

    def __init__(self, num_classes: int, alpha: float = 1.0) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes, self.alpha = num_classes, _check_alpha(alpha)

    def _draw(
        self, n: int, generator: torch.Generator, device: torch.device
    ) -> tuple[float, Tensor]:
        """``λ ~ Beta(α, α)`` and a random partner for each of ``n`` images."""
        lam = _beta(self.alpha, generator)
        return lam, torch.randperm(n, generator=generator).to(device)

    def _soft(self, y: Tensor, partner: Tensor, lam: float) -> Tensor:
        one_hot = F.one_hot(y, self.num_classes).float()
        return lam * one_hot + (1 - lam) * one_hot[partner]


class Mixup(_Mixing):
    name = "mixup"

    def batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        lam, partner = self._draw(len(y), generator, x.device)
        return lam * x + (1 - lam) * x[partner], self._soft(y, partner, lam)


def _random_box(
    height: int, width: int, box_h: int, box_w: int, generator: torch.Generator
) -> tuple[int, int, int, int]:
    """A ``box_h × box_w`` box at a uniformly random centre, clipped to the image:
    ``(top, bottom, left, right)``."""
    cy = int(torch.randint(height, (), generator=generator))
    cx = int(torch.randint(width, (), generator=generator))
    top, bottom = max(cy - box_h // 2, 0), min(cy + box_h - box_h // 2, height)
    left, right = max(cx - box_w // 2, 0), min(cx + box_w - box_w // 2, width)
    return top, bottom, left, right


class CutMix(_Mixing):
    name = "cutmix"

    def batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        lam, partner = self._draw(len(y), generator, x.device)
        height, width = x.shape[-2:]
        side = (1 - lam) ** 0.5
        top, bottom, left, right = _random_box(
            height, width, round(side * height), round(side * width), generator
        )
        mixed = x.clone()
        mixed[..., top:bottom, left:right] = x[partner][..., top:bottom, left:right]
        kept = 1 - (bottom - top) * (right - left) / (height * width)
        return mixed, self._soft(y, partner, kept)


class Cutout(Defense):
    name = "cutout"

    def __init__(self, size: int = 16) -> None:
        if size < 1:
            raise ValueError(f"cutout size must be >= 1, got {size}")
        self.size = size

    def batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        n, _, height, width = x.shape
        cy = torch.randint(height, (n,), generator=generator).to(x.device)
        cx = torch.randint(width, (n,), generator=generator).to(x.device)
        rows = torch.arange(height, device=x.device)[None, :]
        cols = torch.arange(width, device=x.device)[None, :]
        half = self.size // 2
        in_rows = (rows >= (cy - half)[:, None]) & (rows < (cy - half + self.size)[:, None])
        in_cols = (cols >= (cx - half)[:, None]) & (cols < (cx - half + self.size)[:, None])
        hole = in_rows[:, :, None] & in_cols[:, None, :]
        return x.masked_fill(hole[:, None], 0.0), y


class AdversarialTraining(Defense):
    name = "adversarial"

    def __init__(self, epsilon: float, steps: int = 5, step_size: float | None = None) -> None:
        epsilon = check_epsilon(epsilon)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.epsilon, self.steps, self.step_size = epsilon, steps, step_size
        self.name = f"at-{round(255 * epsilon)}"

    def batch(
        self, model: nn.Module, x: Tensor, y: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        model.eval()
        try:
            adversarial = pgd_attack(
                model, x, y, self.epsilon, self.steps, self.step_size, generator=generator
            )
        finally:
            model.train()
        return adversarial, y


def _grayscale(images: Tensor) -> Tensor:
    """uint8 images in BT.601 luma (``transforms.grayscale``), rounded to 8 bits."""
    if images.shape[1] == 1:
        return images
    luma = grayscale(images.float()).round().clamp(0, 255)
    return luma.to(torch.uint8).contiguous()


class Grayscale(Defense):
    name = "grayscale"

    def prepare_train(self, images: Tensor) -> Tensor:
        return _grayscale(images)

    def prepare_test(self, images: Tensor) -> Tensor:
        return _grayscale(images)


class JPEGCompression(Defense):
    name = "jpeg"

    def __init__(self, quality: int = 10) -> None:
        if not 1 <= quality <= 95:
            raise ValueError(f"JPEG quality must be in [1, 95], got {quality}")
        self.quality = quality

    def prepare_train(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.shape[1] not in (1, 3):
            raise ValueError("JPEG compression needs uint8 images with 1 or 3 channels")
        out = torch.empty_like(images)
        array = images.permute(0, 2, 3, 1).numpy()
        for i, pixels in enumerate(array):
            buffer = io.BytesIO()
            Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
                buffer, format="JPEG", quality=self.quality
            )
            decoded = np.asarray(
                Image.open(buffer).convert("L" if pixels.shape[-1] == 1 else "RGB")
            )
            out[i] = torch.from_numpy(decoded.reshape(pixels.shape).copy()).permute(2, 0, 1)
        return out


#: Every defense by name, built by ``make_defense``.
DEFENSES: dict[str, Callable[[int], Defense]] = {
    "none": lambda num_classes: Defense(),
    "mixup": lambda num_classes: Mixup(num_classes),
    "cutout": lambda num_classes: Cutout(16),
    "cutmix": lambda num_classes: CutMix(num_classes),
    "at-2": lambda num_classes: AdversarialTraining(2 / 255),
    "at-4": lambda num_classes: AdversarialTraining(4 / 255),
    "at-8": lambda num_classes: AdversarialTraining(8 / 255),
    "grayscale": lambda num_classes: Grayscale(),
    "jpeg": lambda num_classes: JPEGCompression(10),
}


def make_defense(name: str, num_classes: int, **options: float) -> Defense:
    """The defense ``name`` (see ``DEFENSES``) with its standard settings: Mixup and
    CutMix ``α = 1``, Cutout 16×16, adversarial training ``ε_a ∈ {2, 4, 8}/255`` with 5 PGD
    steps, JPEG quality 10. ``options`` override the constructor's arguments (for example
    ``steps=`` of adversarial training)."""
    if name not in DEFENSES:
        raise ValueError(f"defense must be one of {', '.join(DEFENSES)}; got {name!r}")
    if not options:
        return DEFENSES[name](num_classes)
    if name.startswith("at-"):
        return AdversarialTraining(int(name[3:]) / 255, **options)  # type: ignore[arg-type]
    constructors: dict[str, Callable[..., Defense]] = {
        "mixup": lambda **o: Mixup(num_classes, **o),
        "cutmix": lambda **o: CutMix(num_classes, **o),
        "cutout": Cutout,
        "jpeg": JPEGCompression,
    }
    if name not in constructors:
        raise ValueError(f"the {name} defense takes no options, got {sorted(options)}")
    return constructors[name](**options)
