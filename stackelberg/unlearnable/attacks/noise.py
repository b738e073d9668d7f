"""Model-free baseline poisons: random noise, class-wise noise, LSP and AR perturbations.

None of these look at a model; they are fixed functions of the labels and a seed, clipped to
the ℓ∞ budget ε.

- Random noise: ``δ_i ~ U(−ε, ε)^n`` independently per image (sample-wise).
- Class-wise random noise: one ``δ_k ~ U(−ε, ε)^n`` per class, added to every image of class
  ``k``: already a shortcut a network can learn (Huang et al. 2021, Table 1).
- LSP, linearly separable synthetic perturbations (Yu et al. 2022, Section 4): per class, the
  image is cut into ``patch × patch`` squares, each filled with one random colour; the
  class patterns are linearly separable by construction, with no model at all.
- AR, autoregressive perturbations (Sandoval-Segura et al. 2022, Section 3): per class and
  channel, an AR process over a 3×3 causal window,
  ``δ[r, c] = Σ_{(i, j) ≠ (2, 2)} a_{ij} δ[r − 2 + i, c − 2 + j]``, with the class's eight
  coefficients normalized to sum to one; every image draws its own Gaussian start values, so
  the noise is sample-wise while its *filter* is class-wise. A 3×3 filter built from the
  coefficients annihilates the class's noise, which is what makes it easy to learn. The
  paper scales AR noise in ℓ2; here it is scaled so that ``‖δ_i‖∞ = ε``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

from stackelberg.unlearnable.attacks.base import AttackOutput, check_attack_inputs

__all__ = ["autoregressive_noise", "classwise_noise", "lsp_noise", "random_noise"]


def random_noise(
    images: Tensor, labels: Tensor, epsilon: float, *, num_classes: int, seed: int = 0
) -> AttackOutput:
    """Sample-wise uniform noise ``δ_i ~ U(−ε, ε)^n``."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    generator = torch.Generator().manual_seed(seed)
    delta = (torch.rand(images.shape, generator=generator) * 2 - 1) * epsilon
    return AttackOutput(delta)


def _per_class(patterns: Tensor, labels: Tensor) -> Tensor:
    return patterns[labels.long().cpu()]


def classwise_noise(
    images: Tensor, labels: Tensor, epsilon: float, *, num_classes: int, seed: int = 0
) -> AttackOutput:
    """Class-wise uniform noise: one ``δ_k ~ U(−ε, ε)^n`` per class ``k``."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    generator = torch.Generator().manual_seed(seed)
    patterns = (torch.rand((num_classes, *images.shape[1:]), generator=generator) * 2 - 1) * epsilon
    return AttackOutput(_per_class(patterns, labels), {"patterns": num_classes})


def lsp_noise(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
    patch: int = 8,
) -> AttackOutput:
    """LSP: per class, a grid of ``patch × patch`` squares of one random colour each
    (uniform in ``[−1, 1]`` per channel), upsampled to the image size and scaled to ``ε``."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    _, channels, height, width = images.shape
    if patch < 1 or patch > min(height, width):
        raise ValueError(f"patch must be in [1, {min(height, width)}], got {patch}")
    generator = torch.Generator().manual_seed(seed)
    grid = (-(-height // patch), -(-width // patch))
    colours = torch.rand((num_classes, channels, *grid), generator=generator) * 2 - 1
    patterns = F.interpolate(colours, scale_factor=patch, mode="nearest")[..., :height, :width]
    patterns = patterns / patterns.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return AttackOutput(_per_class(patterns * epsilon, labels), {"patch": patch})


def _stable_coefficients(num_classes: int, channels: int, generator: torch.Generator) -> Tensor:
    """Eight AR coefficients per class and channel, summing to one. Draws are kept only if a
    trial 32×32 process stays bounded (the recursion can blow up for unlucky draws)."""
    out = torch.empty(num_classes, channels, 8, dtype=torch.float64)
    for k in range(num_classes):
        for c in range(channels):
            for _ in range(1000):
                a = torch.randn(8, generator=generator, dtype=torch.float64)
                a = a / a.sum()
                if a.abs().max() < 2 and _trial_is_bounded(a, generator):
                    out[k, c] = a
                    break
            else:  # pragma: no cover - astronomically unlikely
                raise RuntimeError("could not draw a stable AR process")
    return out


def _trial_is_bounded(a: Tensor, generator: torch.Generator) -> bool:
    trial = _run_process(a.view(1, 1, 8), torch.randn(1, 1, 34, 34, generator=generator).double())
    return bool(torch.isfinite(trial).all()) and float(trial.abs().max()) < 1e6


def _run_process(coefficients: Tensor, start: Tensor) -> Tensor:
    """Fill ``start`` (``(N, C, H + 2, W + 2)``, float64) in raster order from row 2 and
    column 2 on: each value is the coefficient-weighted sum of the eight values before it in
    its 3×3 window. ``coefficients`` is ``(N, C, 8)``."""
    x = start.clone()
    _, _, rows, cols = x.shape
    for r in range(2, rows):
        for c in range(2, cols):
            window = x[:, :, r - 2 : r + 1, c - 2 : c + 1].reshape(*x.shape[:2], 9)[..., :8]
            x[:, :, r, c] = (window * coefficients).sum(-1)
    return x[:, :, 2:, 2:]


def autoregressive_noise(
    images: Tensor,
    labels: Tensor,
    epsilon: float,
    *,
    num_classes: int,
    seed: int = 0,
) -> AttackOutput:
    """AR perturbations: one stable AR(3×3) process per class and channel, a fresh Gaussian
    start per image, each image's noise scaled to ``‖δ_i‖∞ = ε``."""
    check_attack_inputs(images, labels, epsilon, num_classes)
    n, channels, height, width = images.shape
    generator = torch.Generator().manual_seed(seed)
    coefficients = _stable_coefficients(num_classes, channels, generator)
    start = torch.randn(n, channels, height + 2, width + 2, generator=generator).double()
    noise = _run_process(coefficients[labels.long().cpu()], start)
    scale = noise.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return AttackOutput((noise / scale * epsilon).float(), {"window": 3})
