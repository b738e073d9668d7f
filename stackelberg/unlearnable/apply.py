"""Apply a trained generator to images: the poisons (``poison_images``) and the
BatchNorm statistics its eval mode reads (``calibrate_batchnorm``). Writing them to files is
``export``'s job."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from stackelberg.models.generators import generate, is_conditional
from stackelberg.unlearnable.game import apply_perturbation

__all__ = ["calibrate_batchnorm", "poison_images"]


@torch.no_grad()
def calibrate_batchnorm(
    generator: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    seed: int = 0,
) -> bool:
    """Set the generator's BatchNorm running statistics to those of its current weights on
    ``images`` (uint8 or float in [0, 1]); returns whether it has any BatchNorm layer.

    The game runs the generator in training mode, where each BatchNorm layer normalizes with
    its batch's mean and variance; ``poison_images`` runs it in eval mode, where the layers
    read running averages. Those averages are updated once per forward pass with momentum 0.1,
    so while the generator's weights move they lag behind them: the poisons a saved generator
    makes are then not the perturbations the game optimized (how far apart, before and after
    this calibration, is measured in ``docs/unlearnable.md``, the paper-game study).

    The statistics are recomputed from scratch over ``images``, in batches of ``batch_size``
    taken in a random order drawn from ``seed``, as the game draws its batches (a dataset is
    often sorted by class, and a batch of one class has a smaller variance than the whole).
    Each running mean becomes the mean of the per-batch means, each running variance the mean
    of the per-batch unbiased variances (``torch.optim.swa_utils.update_bn``'s rule). The
    weights, each layer's momentum and the training mode are left as they were. A
    label-conditioned generator needs ``labels``.
    """
    layers = [m for m in generator.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return False
    if is_conditional(generator) and labels is None:
        raise ValueError("this generator is label-conditioned: pass the labels")
    momenta = [layer.momentum for layer in layers]
    was_training = generator.training
    weight = next(generator.parameters())
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average over the batches
    generator.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    try:
        for index in order.split(batch_size):
            chunk = images[index].to(weight.device)
            x = chunk.to(weight.dtype) / (255.0 if chunk.dtype == torch.uint8 else 1.0)
            generate(generator, x, None if labels is None else labels[index].to(weight.device))
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        generator.train(was_training)
    return True


@torch.no_grad()
def poison_images(
    generator: nn.Module,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    batch_size: int = 500,
    progress: bool = False,
) -> Tensor:
    """``clamp(x + g(x), 0, 1)`` for uint8 (or float in [0, 1]) images ``(N, C, H, W)``, in
    batches, with the generator in eval mode and no grad; float32 on the images' device.
    A label-conditioned generator needs ``labels``."""
    if is_conditional(generator) and labels is None:
        raise ValueError("this generator is label-conditioned: pass the labels")
    was_training = generator.training
    generator.eval()
    device = next(generator.parameters()).device
    out = []
    try:
        for i in tqdm(range(0, len(images), batch_size), desc="poison", disable=not progress):
            chunk = images[i : i + batch_size].to(device)
            x = chunk.float() / 255.0 if chunk.dtype == torch.uint8 else chunk.float()
            chunk_labels = None if labels is None else labels[i : i + batch_size].to(device)
            delta = generate(generator, x, chunk_labels)
            out.append(apply_perturbation(x, delta).to(images.device))
    finally:
        generator.train(was_training)
    return torch.cat(out) if out else images.float()
