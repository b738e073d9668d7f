"""Protect a folder of one's own images with a trained generator.

Every readable image (any size, PNG/JPEG/anything Pillow opens) is perturbed by the generator at
its own resolution, ``x̃ = round(255·clamp(x + g(x), 0, 1))`` with the change clipped to
``⌊255ε⌋`` levels, and written as a lossless PNG under the same relative path (suffix ``.png``).
The generator is fully convolutional: an image is reflect-padded to a multiple of its
down-sampling factor and cropped back; images larger than ``tile × tile`` pixels are processed
in tiles overlapping by ``min(64, tile/4)`` pixels, each output pixel taken from the tile where
it lies farthest from an edge (a label-conditioned generator's class pattern then repeats per
tile). An alpha channel is kept
unchanged. Files that cannot be read as images are reported and skipped, never dropped
silently; nothing is overwritten without ``overwrite=True``. A manifest records, per file, the
‖δ‖∞ measured by reading the written PNG back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.games.unlearnable.budget import check_epsilon
from stackelberg.games.unlearnable.export import quantize_poison
from stackelberg.games.unlearnable.game import apply_perturbation
from stackelberg.utils.io import atomic_path, write_json

__all__ = ["ProtectReport", "perturb_image", "protect_folder"]

MANIFEST = "protect_manifest.json"


@dataclass
class ProtectReport:
    """What :func:`protect_folder` did: ``protected`` (one dict per written file, with its
    measured ``linf_levels``), ``skipped`` (input, reason) and the time it took."""

    protected: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.protected) / max(self.seconds, 1e-9)


def _pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, int, int]:
    height, width = x.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h or pad_w:
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    return x, height, width


def _run(generator: nn.Module, x: Tensor, label: int | None) -> Tensor:
    multiple = int(getattr(getattr(generator, "base", generator), "downsampling", 1))
    padded, height, width = _pad_to_multiple(x, multiple)
    if getattr(generator, "conditional", False):
        assert label is not None
        delta = generator(padded, torch.tensor([label], device=x.device))
    else:
        delta = generator(padded)
    return delta[..., :height, :width]


def _tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    step = tile - overlap
    return sorted({*range(0, size - tile, step), size - tile})


def _edge_depth(index: Tensor, start: int, stop: int, size: int) -> Tensor:
    """How far each coordinate in ``[start, stop)`` lies from the tile's inner edges (an edge
    on the image border does not count)."""
    before = index - start if start > 0 else torch.full_like(index, size)
    after = stop - 1 - index if stop < size else torch.full_like(index, size)
    return torch.minimum(before, after)


@torch.no_grad()
def perturb_image(
    generator: nn.Module,
    x: Tensor,
    *,
    label: int | None = None,
    tile: int = 1024,
    overlap: int = 64,
) -> Tensor:
    """``g(x)`` for one image ``x`` ``(1, C, H, W)`` in ``[0, 1]`` of any size: whole if it
    fits in ``tile × tile``, else in tiles overlapping by ``overlap`` pixels, each pixel from
    the tile where it is most interior."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"need one image (1, C, H, W), got {tuple(x.shape)}")
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got {overlap}, {tile}")
    height, width = x.shape[-2:]
    if height <= tile and width <= tile:
        return _run(generator, x, label)
    delta = torch.zeros_like(x)
    best = torch.full((height, width), -1.0, device=x.device)
    rows = torch.arange(height, device=x.device)[:, None]
    cols = torch.arange(width, device=x.device)[None, :]
    for top in _tile_starts(height, tile, overlap):
        for left in _tile_starts(width, tile, overlap):
            bottom, right = min(top + tile, height), min(left + tile, width)
            piece = _run(generator, x[..., top:bottom, left:right], label)
            depth = torch.minimum(
                _edge_depth(rows[top:bottom], top, bottom, height),
                _edge_depth(cols[:, left:right], left, right, width),
            ).float()
            region = best[top:bottom, left:right]
            take = depth > region
            delta[..., top:bottom, left:right] = torch.where(
                take, piece, delta[..., top:bottom, left:right]
            )
            best[top:bottom, left:right] = torch.where(take, depth, region)
    return delta


def _label_needed(info: dict[str, Any]) -> str:
    """Why a label-conditioned generator needs ``--label``, and what to pass."""
    classes = info.get("classes")
    count = info.get("num_classes", "K")
    listed = (
        ": " + ", ".join(f"{i} = {name}" for i, name in enumerate(classes))
        if isinstance(classes, list)
        else f" (0 to {count} - 1, in the order of its training data's classes)"
    )
    return (
        "this generator is label-conditioned: it adds one learned pattern per class of its "
        f"training data, so it needs the images' class. Pass --label with its index{listed}. "
        "To protect photos that have no such class, train an x-only generator instead "
        "(preset cpu-paper-game or paper)."
    )


def _read(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image.copy()


def _split_alpha(image: Image.Image, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The colour pixels as ``(H, W, C)`` uint8 for a ``channels``-channel generator, and the
    alpha channel if the image has one."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    alpha = np.asarray(image.convert("RGBA"))[..., 3].copy() if has_alpha else None
    colour = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    return (colour if colour.ndim == 3 else colour[..., None]).copy(), alpha


def _to_image(pixels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if pixels.shape[-1] == 1:
        base = Image.fromarray(pixels[..., 0], mode="L")
        return base if alpha is None else Image.merge("LA", (base, Image.fromarray(alpha)))
    base = Image.fromarray(pixels, mode="RGB")
    if alpha is None:
        return base
    return Image.merge("RGBA", (*base.split(), Image.fromarray(alpha)))


def protect_folder(
    generator: nn.Module,
    in_dir: str | Path,
    out_dir: str | Path,
    *,
    epsilon: float,
    label: int | None = None,
    overwrite: bool = False,
    tile: int = 1024,
    overlap: int | None = None,
    generator_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> ProtectReport:
    """Protect every image under ``in_dir`` into ``out_dir`` (see the module doc) and write
    ``out_dir/protect_manifest.json``.

    Raises ``FileNotFoundError`` if ``in_dir`` is not a folder, ``FileExistsError`` if an
    output exists (checked for all files before any is written) and ``overwrite`` is off, and
    ``ValueError`` if ``out_dir`` would write into ``in_dir`` or the generator needs a label."""
    epsilon = check_epsilon(epsilon)
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} does not exist")
    if out_dir == in_dir or in_dir in out_dir.parents:
        raise ValueError(
            f"the output folder {out_dir} lies inside the input folder {in_dir}: choose another"
        )
    overlap = min(64, tile // 4) if overlap is None else overlap
    conditional = bool(getattr(generator, "conditional", False))
    if conditional and label is None:
        raise ValueError(_label_needed(generator_info or {}))
    channels = int(getattr(getattr(generator, "base", generator), "in_channels", 3))
    device = next(generator.parameters()).device
    inputs = sorted(p for p in in_dir.rglob("*") if p.is_file())
    targets = {p: out_dir / p.relative_to(in_dir).with_suffix(".png") for p in inputs}
    clashes = _clashing_targets(targets)
    existing = [t for t in targets.values() if t.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{len(existing)} output file(s) already exist (first: {existing[0]}); pass "
            "--overwrite to replace them"
        )
    report = ProtectReport()
    generator.eval()
    start = time.perf_counter()
    for path in tqdm(inputs, desc="protect", disable=not progress):
        relative = str(path.relative_to(in_dir))
        if path in clashes:
            report.skipped.append({"input": relative, "reason": clashes[path]})
            continue
        try:
            pixels, alpha = _split_alpha(_read(path), channels)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
            report.skipped.append({"input": relative, "reason": f"not a readable image: {error}"})
            continue
        clean = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        x = clean.to(device).float() / 255.0
        delta = perturb_image(generator, x, label=label, tile=tile, overlap=overlap)
        protected = quantize_poison(clean, apply_perturbation(x, delta).cpu(), epsilon)
        target = targets[path]
        target.parent.mkdir(parents=True, exist_ok=True)
        image = _to_image(protected[0].permute(1, 2, 0).numpy(), alpha)
        with atomic_path(target) as tmp:
            image.save(tmp, format="PNG")
        written, _ = _split_alpha(_read(target), channels)
        linf = int(np.abs(written.astype(np.int16) - pixels.astype(np.int16)).max())
        report.protected.append(
            {
                "input": relative,
                "output": str(target.relative_to(out_dir)),
                "width": int(pixels.shape[1]),
                "height": int(pixels.shape[0]),
                "linf_levels": linf,
            }
        )
    report.seconds = time.perf_counter() - start
    write_json(
        out_dir / MANIFEST,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "input_dir": str(in_dir),
            "epsilon": epsilon,
            "epsilon_levels": int(np.floor(255 * epsilon + 1e-6)),
            "label": label,
            "generator": generator_info or {},
            "protected": report.protected,
            "skipped": report.skipped,
            "seconds": report.seconds,
            "images_per_second": report.images_per_second,
        },
    )
    return report


def _clashing_targets(targets: dict[Path, Path]) -> dict[Path, str]:
    """Inputs whose output name another input already takes (``a.jpg`` and ``a.png``)."""
    seen: dict[Path, Path] = {}
    clashes: dict[Path, str] = {}
    for source, target in targets.items():
        if target in seen:
            clashes[source] = f"its output {target.name} is already written for {seen[target].name}"
        else:
            seen[target] = source
    return clashes
