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
- ``crop-flip``: the victim's own augmentation (``victim.augment``: a random crop of the
  4-pixel zero-padded image and a random horizontal flip, one draw per image). A shortcut tied
  to pixel positions that the victim's crops break is one the leader can learn to avoid.
- ``FollowerTransforms``: a distribution over such pipelines, parsed from names
  (``"none"``, ``"grayscale"``, ``"jpeg-10"``, ``"jpeg-30:90"`` for a quality drawn uniformly
  in that range, ``"crop-flip"``, and compositions applied left to right such as
  ``"jpeg-10:90+crop-flip"``: the defense on the dataset, then the augmentation per batch).
  ``resample()`` draws the next one; the draws, the crops and the flips are a function of a
  seed and a counter kept as a buffer, so a game's ``state_dict`` resumes them exactly, and
  every call within one outer step sees the same pipeline (the same crops for the same batch).

The budget is unaffected: ``‖x̃ − x‖∞ ≤ ε`` holds for the image as published, before any
transform.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from stackelberg.unlearnable.color import LUMA, grayscale
from stackelberg.unlearnable.victim import augment

__all__ = ["LUMA", "FollowerTransforms", "check_follower_transforms", "grayscale", "jpeg"]

_JPEG = re.compile(r"^jpeg-(\d+)(?::(\d+))?$")


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


#: One step of a pipeline: its kind and its JPEG quality range (0, 0 for the others).
Spec = tuple[str, int, int]
#: One drawn step: its kind and its JPEG quality (0 for the others).
Step = tuple[str, int]


def _parse_step(name: str) -> Spec:
    """``("none" | "grayscale" | "crop-flip" | "jpeg", low quality, high quality)``."""
    if name in ("none", "grayscale", "crop-flip"):
        return name, 0, 0
    match = _JPEG.match(name)
    if match is None:
        raise ValueError(
            f"unknown follower transform {name!r}: use 'none', 'grayscale', 'crop-flip', "
            "'jpeg-Q' or 'jpeg-LOW:HIGH' (qualities in [1, 100]), or several joined by '+'"
        )
    low = int(match.group(1))
    high = int(match.group(2) or low)
    if not 1 <= low <= high <= 100:
        raise ValueError(f"JPEG qualities must satisfy 1 <= LOW <= HIGH <= 100, got {name!r}")
    return "jpeg", low, high


def _parse(name: str) -> tuple[Spec, ...]:
    """The steps of a pipeline name such as ``"jpeg-10:90+crop-flip"``, in order."""
    return tuple(_parse_step(part) for part in name.split("+"))


class FollowerTransforms(nn.Module):
    """A distribution over follower-side pipelines, one drawn per outer step.

    Args:
        names: the pipelines, drawn with equal probability (``"none"``, ``"grayscale"``,
            ``"crop-flip"``, ``"jpeg-Q"``, ``"jpeg-LOW:HIGH"``, or steps joined by ``"+"``,
            applied left to right).
        seed: the seed of the draws.

    Calling the module applies the current pipeline; ``resample()`` draws the next one and
    returns it as a tuple of ``(kind, JPEG quality or 0)`` steps. Draw ``k`` (the pipeline,
    its JPEG quality, and the crops and flips of ``crop-flip``) depends only on ``seed`` and
    ``k``, and ``k`` is a buffer (``draws``), so the game's ``state_dict`` carries it and a
    resumed run draws what the uninterrupted one would have.
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
        self.current: tuple[Step, ...] = (("none", 0),)
        self._draw(int(self.draws))

    def _rng(self, k: int, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + k + salt * 7_919)

    def _draw(self, k: int) -> None:
        rng = self._rng(k)
        steps = self.specs[int(torch.randint(len(self.specs), (1,), generator=rng))]
        self.current = tuple(
            (kind, int(torch.randint(low, high + 1, (1,), generator=rng)) if kind == "jpeg" else 0)
            for kind, low, high in steps
        )

    def resample(self) -> tuple[Step, ...]:
        """Draw the next pipeline; returns its ``(kind, JPEG quality or 0)`` steps."""
        self.draws += 1
        self._draw(int(self.draws))
        return self.current

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._draw(int(self.draws))  # the draw the saved counter points at

    def forward(self, x: Tensor) -> Tensor:
        for position, (kind, quality) in enumerate(self.current):
            if kind == "grayscale":
                x = grayscale(x)
            elif kind == "jpeg":
                x = jpeg(x, quality)
            elif kind == "crop-flip":  # the same crops on every call of this draw
                x = augment(x, self._rng(int(self.draws), salt=position + 1))
        return x

    def extra_repr(self) -> str:
        return f"names={list(self.names)}, seed={self.seed}, current={self.current}"


def check_follower_transforms(transforms: Any) -> FollowerTransforms | None:
    """``transforms`` itself if it is ``None`` or a ``FollowerTransforms``; a ``TypeError``
    naming what was given otherwise (a list of names, say, which must be wrapped first)."""
    if transforms is not None and not isinstance(transforms, FollowerTransforms):
        raise TypeError(
            f"follower_transforms must be a FollowerTransforms, got {type(transforms).__name__}"
        )
    return transforms
