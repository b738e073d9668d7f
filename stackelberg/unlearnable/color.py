"""Colour: the BT.601 grayscale that the follower's pipeline (``transforms``) and the
victim's defense (``defenses.Grayscale``) share."""

from __future__ import annotations

from torch import Tensor

__all__ = ["LUMA", "grayscale"]

#: ITU-R BT.601 luma weights (R, G, B), as the whole package uses them.
LUMA = (0.299, 0.587, 0.114)


def grayscale(x: Tensor) -> Tensor:
    """BT.601 luma of ``(N, 3, H, W)`` images, replicated over the three channels (a
    one-channel image is returned as is); linear, so any intensity scale works. The one
    grayscale of the package: the follower's differentiable pipeline and the victim's
    ``defenses.Grayscale`` (which rounds it to 8 bits) both call it."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"grayscale needs 1 or 3 channels, got {x.shape[1]}")
    weights = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x)
