"""The follower's pipeline: what a victim does to the published images before its classifier
sees them, written as differentiable maps so that the leader can optimize through them.

A victim that recompresses its training images as JPEG, or converts them to grayscale, trains
on ``T(x̃)``, not on ``x̃``. In the Stackelberg game the follower *is* that pipeline, so a
leader that anticipates it plays against ``h(w, θ) = E_T L_c(f_θ(T(x̃(w))), y)``: the
expectation over transformation of Athalye et al. (2018, "Synthesizing robust adversarial
examples"), estimated with one transform drawn per outer step. Image shortcut squeezing
(Liu, Zhao & Larson 2023) is exactly such a pipeline: grayscale, or JPEG at quality 10.

- ``grayscale``: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` replicated over the
  channels, the defense's formula without its final rounding to 8 bits.
- ``jpeg``: kornia's differentiable JPEG codec (Reich et al. 2024; Shin & Song 2017), which
  replaces rounding and flooring by cubic approximations so that gradients pass. It follows
  Pillow's encoder closely but not exactly (``tests/test_transforms.py`` states the
  tolerance); a one-channel image is coded as gray RGB.
- ``FollowerTransforms``: a distribution over such transforms, parsed from names
  (``"none"``, ``"grayscale"``, ``"jpeg-10"``, ``"jpeg-30:90"`` for a quality drawn uniformly
  in that range). ``resample()`` draws the next one; the draws are a function of a seed and a
  counter kept as a buffer, so a game's ``state_dict`` resumes them exactly.

The budget is unaffected: ``‖x̃ − x‖∞ ≤ ε`` holds for the image as published, before any
transform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["LUMA", "FollowerTransforms", "grayscale", "jpeg"]

#: ITU-R BT.601 luma weights (R, G, B), as ``defenses.Grayscale`` uses them.
LUMA = (0.299, 0.587, 0.114)

_JPEG = re.compile(r"^jpeg-(\d+)(?::(\d+))?$")


def grayscale(x: Tensor) -> Tensor:
    """BT.601 luma of ``(N, 3, H, W)`` images in ``[0, 1]``, replicated over the three
    channels (a one-channel image is returned as is)."""
    if x.shape[1] == 1:
        return x
    weights = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True).expand_as(x)


def jpeg(x: Tensor, quality: float) -> Tensor:
    """A differentiable JPEG encode and decode of ``(N, C, H, W)`` images in ``[0, 1]``
    (``C`` = 1 or 3) at ``quality`` in ``[1, 100]``, with kornia's codec."""
    try:
        from kornia.enhance import jpeg_codec_differentiable
    except ImportError as error:
        raise ImportError(
            "the differentiable JPEG transform needs kornia: pip install 'stackelberg[robust]'"
        ) from error
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in [1, 100], got {quality}")
    rgb = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
    coded = jpeg_codec_differentiable(rgb, x.new_tensor([float(quality)]))
    return coded.mean(1, keepdim=True) if x.shape[1] == 1 else coded


def _parse(name: str) -> tuple[str, int, int]:
    """``("none" | "grayscale" | "jpeg", low quality, high quality)`` for one name."""
    if name in ("none", "grayscale"):
        return name, 0, 0
    match = _JPEG.match(name)
    if match is None:
        raise ValueError(
            f"unknown follower transform {name!r}: use 'none', 'grayscale', 'jpeg-Q' or "
            "'jpeg-LOW:HIGH' (qualities in [1, 100])"
        )
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 100:
        raise ValueError(f"JPEG qualities must satisfy 1 <= LOW <= HIGH <= 100, got {name!r}")
    return "jpeg", low, high


class FollowerTransforms(nn.Module):
    """A distribution over follower-side transforms, one drawn per outer step.

    Args:
        names: the transforms, drawn with equal probability (``"none"``, ``"grayscale"``,
            ``"jpeg-Q"``, ``"jpeg-LOW:HIGH"``).
        seed: the seed of the draws.

    Calling the module applies the current transform; ``resample()`` draws the next one. Draw
    ``k`` depends only on ``seed`` and ``k``, and ``k`` is a buffer (``draws``), so the game's
    ``state_dict`` carries it and a resumed run draws what the uninterrupted one would have.
    """

    draws: Tensor

    def __init__(self, names: Sequence[str], seed: int = 0) -> None:
        super().__init__()
        if isinstance(names, str) or not names:
            raise ValueError("give the follower transforms as a non-empty list of names")
        self.names = tuple(names)
        self.specs = tuple(_parse(n) for n in self.names)
        self.seed = int(seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))
        self.current: tuple[str, int] = ("none", 0)
        self._draw(int(self.draws))

    def _draw(self, k: int) -> None:
        rng = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
        kind, low, high = self.specs[int(torch.randint(len(self.specs), (1,), generator=rng))]
        quality = int(torch.randint(low, high + 1, (1,), generator=rng)) if kind == "jpeg" else 0
        self.current = (kind, quality)

    def resample(self) -> tuple[str, int]:
        """Draw the next transform; returns it as ``(kind, JPEG quality or 0)``."""
        self.draws += 1
        self._draw(int(self.draws))
        return self.current

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._draw(int(self.draws))  # the draw the saved counter points at

    def forward(self, x: Tensor) -> Tensor:
        kind, quality = self.current
        if kind == "grayscale":
            return grayscale(x)
        if kind == "jpeg":
            return jpeg(x, quality)
        return x

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, seed={self.seed}, current={self.current}"
