"""Protect a folder of one's own images with a trained generator.

Every readable image (any size, PNG/JPEG/anything Pillow opens) is perturbed by the generator at
its own resolution, ``x̃ = round(255·clamp(x + g(x), 0, 1))`` with the change clipped to
``⌊255ε⌋`` levels (``budget``), and written as a lossless
PNG under the same relative path (suffix ``.png``). The generator is fully convolutional: an
image is reflect-padded to a multiple of its down-sampling factor and cropped back. Images
larger than ``tile × tile`` pixels are streamed tile by tile: the image is cut into cores, each
perturbed inside a window that widens it by ``min(64, tile/4) / 2`` pixels on each inner side,
quantized and checked against the budget, and written into the output, so the working memory
beyond the decoded input and the output (a few bytes per pixel) is one tile's, whatever the
image's size (a label-conditioned generator's class pattern then repeats per tile).

Photos as people have them: the EXIF orientation is applied first, so the output displays
upright; the ICC colour profile is kept; other metadata (EXIF: camera, date, GPS position) is
not copied, which also keeps a published photo from giving away where it was taken. An alpha
channel is kept unchanged. Animated images, images of more than 8 bits per channel (which an
8-bit PNG could not reproduce within ε) and images over ``max_pixels`` are skipped and listed,
as are files that cannot be read and dangling links; nothing is dropped silently.

Nothing is written into the input folder or replaced that protect did not write. The manifest
``protect_manifest.json`` records every batch written into the output folder, with, per file,
the ‖δ‖∞ measured by reading the written PNG back against the source pixels.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.checks import check_epsilon
from stackelberg.models.generators import generate, is_conditional
from stackelberg.unlearnable.budget import BudgetError, budget_levels, enforce_budget
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.utils.io import atomic_path, write_json
from stackelberg.utils.ownership import OwnershipError, check_disjoint, owned_json

__all__ = ["ProtectReport", "perturb_image", "protect_folder", "protect_pixels"]

MANIFEST = "protect_manifest.json"


@dataclass
class ProtectReport:
    """What ``protect_folder`` did: ``protected`` (one dict per written file, with its
    measured ``linf_levels``), ``skipped`` (input, reason), ``resumed`` (inputs an earlier
    batch had protected) and the time it took."""

    protected: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
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
    labels = None if label is None else torch.tensor([label], device=x.device)
    delta = generate(generator, padded, labels)
    return delta[..., :height, :width]


def _windows(size: int, tile: int, overlap: int) -> list[tuple[slice, slice]]:
    """Along one axis of ``size`` pixels: ``(core, window)`` pairs. The cores partition the
    axis; each window is its core widened by ``overlap // 2`` pixels on each side (clipped at
    the border) and at most ``tile`` long, so every core pixel lies at least ``overlap // 2``
    pixels from any window edge inside the image."""
    if size <= tile:
        return [(slice(0, size), slice(0, size))]
    halo = overlap // 2
    core = tile - 2 * halo
    return [
        (
            slice(start, min(start + core, size)),
            slice(max(start - halo, 0), min(start + core + halo, size)),
        )
        for start in range(0, size, core)
    ]


def _tiles(
    height: int, width: int, tile: int, overlap: int
) -> list[tuple[tuple[slice, slice], tuple[slice, slice], tuple[slice, slice]]]:
    """The image's tiles: ``(core, window, core within window)``, each a ``(rows, columns)``
    pair of slices; the cores partition the image and every window fits in ``tile × tile``."""
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got {overlap}, {tile}")
    tiles = []
    for rows, window_rows in _windows(height, tile, overlap):
        for cols, window_cols in _windows(width, tile, overlap):
            inner = (
                slice(rows.start - window_rows.start, rows.stop - window_rows.start),
                slice(cols.start - window_cols.start, cols.stop - window_cols.start),
            )
            tiles.append(((rows, cols), (window_rows, window_cols), inner))
    return tiles


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
    fits in ``tile × tile``, else tile by tile, each tile's core taken from a window that
    extends it by ``overlap // 2`` pixels on every inner side (neighbouring windows overlap by
    ``overlap``), so no output pixel comes from near a window's inner edge."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"need one image (1, C, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    tiles = _tiles(height, width, tile, overlap)
    if len(tiles) == 1:
        return _run(generator, x, label)
    delta = torch.empty_like(x)
    for (rows, cols), (window_rows, window_cols), (inner_rows, inner_cols) in tiles:
        piece = _run(generator, x[..., window_rows, window_cols], label)
        delta[..., rows, cols] = piece[..., inner_rows, inner_cols]
    return delta


@torch.no_grad()
def protect_pixels(
    generator: nn.Module,
    pixels: np.ndarray,
    epsilon: float,
    *,
    label: int | None = None,
    tile: int = 1024,
    overlap: int = 64,
    source: str | None = None,
) -> np.ndarray:
    """The protected image, ``(H, W, C)`` uint8, computed tile by tile (the tiles of
    ``perturb_image``): for each tile, ``round(255·clamp(x + g(x), 0, 1))`` with the change
    clipped to ``⌊255ε⌋`` levels and checked
    (``enforce_budget``), written into the output.

    Equal to quantizing ``clamp(x + perturb_image(x), 0, 1)`` as a whole, but the working
    memory beyond the input and output arrays (one byte per pixel and channel each) is that of
    one ``tile × tile`` window, whatever the image's size.

    Raises:
        BudgetError: the generator's output is not finite (naming ``source``).
    """
    epsilon = check_epsilon(epsilon, whole_level=True)
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"need (H, W, C) uint8 pixels, got {pixels.dtype} {pixels.shape}")
    device = next(generator.parameters()).device
    height, width = pixels.shape[:2]
    protected = np.empty_like(pixels)
    for (rows, cols), window, (inner_rows, inner_cols) in _tiles(height, width, tile, overlap):
        clean = torch.from_numpy(np.ascontiguousarray(pixels[window])).permute(2, 0, 1)[None]
        x = clean.to(device, torch.float32) / 255.0
        delta = _run(generator, x, label)[..., inner_rows, inner_cols]
        poisoned = apply_perturbation(x[..., inner_rows, inner_cols], delta).cpu()
        core = enforce_budget(clean[..., inner_rows, inner_cols], poisoned, epsilon, source=source)
        protected[rows, cols] = core[0].permute(1, 2, 0).numpy()
    return protected


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


#: Images with more pixels than this are skipped (and listed) unless ``max_pixels`` is raised:
#: besides one tile's work, protecting takes about 11 bytes per pixel (the decoded image, its
#: protected copy, the read-back check), ≈ 0.45 GB at this limit.
DEFAULT_MAX_PIXELS = 40_000_000

_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class _Unsupported(Exception):
    """An input that is an image but cannot be protected faithfully; the reason is listed."""


def _read(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at ``path``, upright (its EXIF orientation applied), as 8-bit pixels.

    Raises ``_Unsupported`` for animations, images of more than 8 bits per channel and
    images over ``max_pixels``, checked from the header before any pixel is decoded.
    """
    with Image.open(path) as image:
        width, height = image.size
        if width * height > max_pixels:
            raise _Unsupported(
                f"{width}×{height} = {width * height} pixels is over the limit of {max_pixels} "
                "(raise it with --max-pixels; memory grows with the pixel count)"
            )
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            raise _Unsupported(
                f"an animated image ({frames} frames): protect handles still images only and "
                "would drop all frames but the first"
            )
        rawmode = image.tile[0][3] if image.tile and len(image.tile[0]) > 3 else ""
        if image.mode in _HIGH_DEPTH_MODES or ";16" in str(rawmode):
            raise _Unsupported(
                f"a high-bit-depth image (mode {image.mode}, {rawmode or 'more than 8 bits'}): "
                "protect writes 8-bit PNGs, which would change it by more than ε; convert it to "
                "8 bits per channel first"
            )
        image.load()
        upright = ImageOps.exif_transpose(image)
        return (upright if upright is not None else image).copy()


def _split_alpha(image: Image.Image, channels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The colour pixels as ``(H, W, C)`` uint8 for a ``channels``-channel generator, and the
    alpha channel if the image has one."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    alpha = np.asarray(image.convert("RGBA"))[..., 3].copy() if has_alpha else None
    colour = np.asarray(image.convert("RGB" if channels == 3 else "L"))
    return (colour if colour.ndim == 3 else colour[..., None]).copy(), alpha


def _levels_changed(written: np.ndarray, source: np.ndarray, rows: int = 256) -> int:
    """``max |written − source|`` in intensity levels, ``rows`` image rows at a time (so the
    int16 differences never take more than a strip of memory)."""
    return max(
        int(np.abs(written[i : i + rows].astype(np.int16) - source[i : i + rows]).max())
        for i in range(0, len(source), rows)
    )


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
    resume: bool = False,
    tile: int = 1024,
    overlap: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    generator_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> ProtectReport:
    """Protect every image under ``in_dir`` into ``out_dir`` (see the module doc) and record
    the batch in ``out_dir/protect_manifest.json``.

    The manifest keeps every batch written into ``out_dir`` (``batches``, appended, never
    replaced) and is saved every few images, so an interrupted run can be continued with
    ``resume=True``: inputs whose output an earlier batch recorded are skipped. Only outputs
    a batch recorded are ever replaced (with ``overwrite=True``); any other existing file is
    refused, and so is any overlap of ``in_dir`` and ``out_dir`` (links resolved).

    Raises ``FileNotFoundError`` if ``in_dir`` is not a folder, ``FileExistsError`` if an
    output exists (checked for all files before any is written) and neither ``overwrite``
    nor ``resume`` applies, ``OwnershipError`` if it was not
    written by ``protect``, and ``ValueError`` for overlapping folders, a bad ε, or a missing
    label."""
    epsilon = check_epsilon(epsilon, whole_level=True)
    if overwrite and resume:
        raise ValueError("choose one of overwrite (redo every image) and resume (skip done ones)")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if not Path(in_dir).is_dir():
        kind = "is not a folder" if Path(in_dir).exists() else "does not exist"
        raise FileNotFoundError(f"input folder {in_dir} {kind}")
    check_disjoint({"the input folder": in_dir}, {"the output folder": out_dir})
    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"the output folder {out_dir} exists and is not a folder")
    overlap = min(64, tile // 4) if overlap is None else overlap
    conditional = is_conditional(generator)
    if conditional and label is None:
        raise ValueError(_label_needed(generator_info or {}))
    manifest_path = out_dir / MANIFEST
    batches = _earlier_batches(manifest_path)
    recorded = {entry["output"] for batch in batches for entry in batch.get("protected", [])}
    channels = int(getattr(getattr(generator, "base", generator), "in_channels", 3))
    found = sorted(in_dir.rglob("*"))
    inputs = [p for p in found if p.is_file()]
    dangling = [p for p in found if p.is_symlink() and not p.exists()]
    targets = {p: out_dir / p.relative_to(in_dir).with_suffix(".png") for p in inputs}
    clashes = _clashing_targets(targets)
    existing = [t for t in targets.values() if t.exists() or t.is_symlink()]
    foreign = [t for t in existing if str(t.relative_to(out_dir)) not in recorded]
    if foreign:
        raise OwnershipError(
            f"{len(foreign)} output file(s) exist that protect did not write (first: "
            f"{foreign[0]}): they are never replaced, not even with --overwrite; choose another "
            "output folder"
        )
    if existing and not (overwrite or resume):
        raise FileExistsError(
            f"{len(existing)} output file(s) from an earlier protect run already exist (first: "
            f"{existing[0]}): pass --resume to continue that run, or --overwrite to redo them"
        )
    report = ProtectReport()
    report.skipped += [
        {"input": str(p.relative_to(in_dir)), "reason": "a link to nothing (dangling)"}
        for p in dangling
    ]
    batch: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "input_dir": str(in_dir),
        "epsilon": epsilon,
        "epsilon_levels": budget_levels(epsilon),
        "label": label,
        "generator": generator_info or {},
        "protected": report.protected,
        "skipped": report.skipped,
        "finished": False,
    }
    source = str((generator_info or {}).get("path", "the generator"))
    generator.eval()
    start = time.perf_counter()
    for count, path in enumerate(tqdm(inputs, desc="protect", disable=not progress)):
        relative = str(path.relative_to(in_dir))
        target = targets[path]
        if path in clashes:
            report.skipped.append({"input": relative, "reason": clashes[path]})
            continue
        if resume and target.exists():
            report.resumed.append(relative)
            continue
        try:
            image = _read(path, max_pixels)
            pixels, alpha = _split_alpha(image, channels)
        except _Unsupported as reason:
            report.skipped.append({"input": relative, "reason": str(reason)})
            continue
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
                SyntaxError) as error:  # fmt: skip
            report.skipped.append({"input": relative, "reason": f"not a readable image: {error}"})
            continue
        icc = image.info.get("icc_profile")
        del image  # the decoded pixels are all that is needed from here on
        protected = protect_pixels(
            generator, pixels, epsilon, label=label, tile=tile, overlap=overlap, source=source
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = _to_image(protected, alpha)
        del protected
        with atomic_path(target) as tmp:
            picture.save(tmp, format="PNG", **({"icc_profile": icc} if icc else {}))
        del picture
        written, _ = _split_alpha(_read(target, max(max_pixels, pixels.size)), channels)
        linf = _levels_changed(written, pixels)
        if linf > budget_levels(epsilon):  # the invariant, checked on the bytes written
            target.unlink()
            raise BudgetError(
                f"{target} changed a pixel by {linf} levels, over the budget of "
                f"{budget_levels(epsilon)}; it was removed"
            )
        report.protected.append(
            {
                "input": relative,
                "output": str(target.relative_to(out_dir)),
                "width": int(pixels.shape[1]),
                "height": int(pixels.shape[0]),
                "linf_levels": linf,
            }
        )
        if count % 25 == 24:
            _write_manifest(manifest_path, batches, batch, report, start)
    batch["finished"] = True
    _write_manifest(manifest_path, batches, batch, report, start)
    return report


def _earlier_batches(path: Path) -> list[dict[str, Any]]:
    """The batches an existing manifest records (a manifest of the first format, one batch
    at the top level, counts as one); refuses a file of that name protect did not write."""
    if not owned_json(
        path,
        lambda r: isinstance(r.get("batches"), list) or isinstance(r.get("protected"), list),
        "a manifest written by `stackelberg protect`",
    ):
        return []
    record = json.loads(path.read_text())
    return list(record["batches"]) if "batches" in record else [record]


def _write_manifest(
    path: Path,
    earlier: list[dict[str, Any]],
    batch: dict[str, Any],
    report: ProtectReport,
    start: float,
) -> None:
    report.seconds = time.perf_counter() - start
    batch.update(
        seconds=report.seconds,
        images_per_second=report.images_per_second,
        resumed=len(report.resumed),
    )
    write_json(path, {"format": "stackelberg-protect", "batches": [*earlier, batch]})


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
