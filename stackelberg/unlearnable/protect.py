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
as are files that cannot be read, dangling links, FIFOs, devices and sockets (never opened);
nothing is dropped silently. Channels: a 1-channel generator perturbs each channel of a colour
image on its own, so the photo stays in colour; a grayscale image given to a 3-channel
generator is written as RGB. Either way the written file is read back, in its own mode,
against the source in the source's own mode, and the measured ‖δ‖∞ must be within the budget.

Nothing is written into the input folder or replaced that protect did not write. The manifest
``protect_manifest.json`` records every batch written into the output folder, with, per file,
the measured ‖δ‖∞ and the written bytes' size and SHA-256; ``ledger`` journals each output
before it is renamed into place, so an interrupted run loses no record (see there).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from stackelberg.checks import check_epsilon
from stackelberg.models.generators import generate, is_conditional
from stackelberg.unlearnable.budget import BudgetError, budget_levels, enforce_budget
from stackelberg.unlearnable.choices import DEFAULT_MAX_PIXELS
from stackelberg.unlearnable.game import apply_perturbation
from stackelberg.unlearnable.ledger import MANIFEST, OutputLedger
from stackelberg.utils.files import file_sha256
from stackelberg.utils.ownership import OwnershipError, check_disjoint

__all__ = ["ProtectReport", "perturb_image", "protect_folder", "protect_pixels"]


@dataclass
class ProtectReport:
    """What ``protect_folder`` did: ``protected`` (one dict per written file: ``input``,
    ``output``, the source's ``mode``, ``width``, ``height``, the measured ``linf_levels``,
    and the written file's ``bytes`` and ``sha256``), ``skipped`` (input, reason), ``resumed``
    (inputs an earlier batch had protected) and the time it took."""

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
        clean = torch.from_numpy(np.array(pixels[window])).permute(2, 0, 1)[None]  # one tile
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
        f"training data, so it needs a class. Pass --label with an index{listed}. For photos "
        "of your own that belong to none of these classes, pass any one index and keep it for "
        "the whole folder: one consistent pattern is what was measured to protect (docs/cli.md)"
    )


_HIGH_DEPTH_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_GRAY_MODES = {"1", "L", "LA", "La"}
#: Raw modes with 16 or 32 bits per channel (PNG ``RGB;16B``, TIFF ``RGB;16N``, ``I;16``);
#: packed 5-6-5 and 5-5-5 pixels (BMP ``BGR;16``, ``BGR;15``) hold under 8 bits per channel.
_WIDE_RAWMODE = re.compile(r";(16|32)[BLN]$|^I;(16|32)|^F;")


class _Unsupported(Exception):
    """An input that is an image but cannot be protected faithfully; the reason is listed."""


def _high_depth(image: ImageFile.ImageFile) -> str | None:
    """How ``image`` stores more than 8 bits per channel, or ``None``; read from the header."""
    if image.mode in _HIGH_DEPTH_MODES:
        return f"mode {image.mode}"
    for tile in image.tile:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        if isinstance(rawmode, str) and _WIDE_RAWMODE.search(rawmode):
            return f"stored as {rawmode}"
        maximum = args[1] if isinstance(args, tuple) and len(args) > 1 else None
        if image.format == "PPM" and isinstance(maximum, int) and maximum > 255:
            return f"maximum value {maximum}"  # a Netpbm file's largest level
    return None


def _read(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The image at ``path``, upright (its EXIF orientation applied), as 8-bit pixels.

    Raises ``_Unsupported`` for animations, images of more than 8 bits per channel and
    images over ``max_pixels``, checked from the header before any pixel is decoded.
    """
    image = Image.open(path)
    try:
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
        depth = _high_depth(image)
        if depth is not None:
            raise _Unsupported(
                f"a high-bit-depth image ({depth}): protect writes 8-bit PNGs, which would "
                "change it by more than ε; convert it to 8 bits per channel first"
            )
        image.load()  # decodes, and closes the file (one frame): no copy is needed
    except BaseException:
        image.close()
        raise
    ImageOps.exif_transpose(image, in_place=True)  # upright, without a second copy
    return image


def _strips(image: Image.Image, mode: str, rows: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """``image`` in ``mode`` as uint8 ``(rows, W, C)`` arrays, top to bottom, with their first
    row: a whole-image conversion would hold a second copy of every pixel."""
    for top in range(0, image.height, rows):
        strip = image.crop((0, top, image.width, min(top + rows, image.height)))
        array = np.asarray(strip if strip.mode == mode else strip.convert(mode))
        yield top, array if array.ndim == 3 else array[..., None]


def _pixels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """The colour pixels in the image's own mode, ``(H, W, 1)`` for a grayscale image and
    ``(H, W, 3)`` otherwise, uint8, and the alpha channel if the image has one."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    alpha = None
    if has_alpha:
        alpha = np.empty((image.height, image.width), np.uint8)
        for top, strip in _strips(image, "RGBA"):
            alpha[top : top + len(strip)] = strip[..., 3]
    mode = "L" if image.mode in _GRAY_MODES else "RGB"
    colour = np.empty((image.height, image.width, len(mode)), np.uint8)
    for top, strip in _strips(image, mode):
        colour[top : top + len(strip)] = strip
    return colour, alpha


def _protect_in_mode(
    generator: nn.Module, channels: int, pixels: np.ndarray, epsilon: float, **options: Any
) -> np.ndarray:
    """``protect_pixels`` for an image whose channel count may differ from the generator's:
    a 1-channel generator perturbs each colour channel on its own, so a colour photo stays in
    colour; a grayscale image is given to a 3-channel generator as gray RGB (and written as
    RGB, each channel within the budget of the gray source)."""
    if pixels.shape[-1] == channels:
        return protect_pixels(generator, pixels, epsilon, **options)
    if channels == 1:
        protected = np.empty_like(pixels)
        for c in range(pixels.shape[-1]):
            single = np.ascontiguousarray(pixels[..., c : c + 1])
            protected[..., c : c + 1] = protect_pixels(generator, single, epsilon, **options)
        return protected
    return protect_pixels(generator, np.repeat(pixels, channels, axis=-1), epsilon, **options)


def _to_image(pixels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if pixels.shape[-1] == 1:
        base = Image.fromarray(pixels[..., 0], mode="L")
        return base if alpha is None else Image.merge("LA", (base, Image.fromarray(alpha)))
    base = Image.fromarray(pixels, mode="RGB")
    if alpha is None:
        return base
    return Image.merge("RGBA", (*base.split(), Image.fromarray(alpha)))


def _scan(in_dir: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """The regular files under ``in_dir`` (links to them followed), and every other entry
    that is not a folder, listed with why it is skipped (dangling links, FIFOs, devices,
    sockets: protect never opens them, so a FIFO cannot hang it nor ``/dev/zero`` fill it)."""
    inputs, skipped = [], []
    for path in sorted(in_dir.rglob("*")):
        if path.is_file():
            inputs.append(path)
        elif path.is_dir():
            continue
        else:
            reason = (
                "a link to nothing (dangling)"
                if path.is_symlink() and not path.exists()
                else "not a regular file (a FIFO, device or socket): protect reads image files only"
            )
            skipped.append({"input": str(path.relative_to(in_dir)), "reason": reason})
    return inputs, skipped


def _clashing_targets(targets: dict[Path, Path]) -> dict[Path, str]:
    """Inputs whose output name another input already takes (``a.jpg`` and ``a.png``), or
    is the folder other outputs go into (``x.jpg`` beside a folder ``x.png/``)."""
    folders = {parent for target in targets.values() for parent in target.parents}
    seen: dict[Path, Path] = {}
    clashes: dict[Path, str] = {}
    for source, target in targets.items():
        if target in folders:
            clashes[source] = f"its output {target.name} is also the folder of other outputs"
        elif target in seen:
            clashes[source] = f"its output {target.name} is already written for {seen[target].name}"
        else:
            seen[target] = source
    return clashes


def _check_folders_inside(targets: list[Path], out_dir: Path) -> None:
    """Every folder an output goes into lies inside ``out_dir`` once links are resolved, so a
    linked subfolder can never lead a write into the input or anywhere else."""
    for folder in sorted({target.parent for target in targets}):
        resolved = folder.resolve()
        if resolved != out_dir and out_dir not in resolved.parents:
            raise OwnershipError(
                f"{folder} leads outside the output folder (to {resolved}, through a link): "
                "protect writes only inside its output folder; remove the link or choose "
                "another output folder"
            )


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
    the batch in ``out_dir/protect_manifest.json`` (``ledger``).

    Each output is checked (read back against the source in the source's own mode), hashed
    and journaled before it is renamed into place, so a run stopped at any point, even by
    SIGKILL, leaves every written file recorded and ``resume=True`` continues it: inputs whose
    output a batch recorded are skipped. A file counts as protect's only while its bytes hash
    to a recorded value: ``overwrite`` replaces only those, and a file the user changed, or
    any other, is refused, as is any overlap of ``in_dir`` and ``out_dir`` (links resolved,
    in every subfolder). Two runs into one folder cannot interleave: the second is refused.

    Raises ``FileNotFoundError`` if ``in_dir`` is not a folder, or ``resume`` finds no earlier
    run; ``FileExistsError`` if an output exists (checked for all files before any is
    written) and neither ``overwrite`` nor ``resume`` applies; ``OwnershipError`` if it was
    not written by ``protect`` or was changed since; ``ConcurrentRunError`` if another run
    holds the folder; ``ValueError`` for overlapping folders, a bad ε, or a missing label;
    ``OSError`` (saying what was written) if writing fails partway."""
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
    if is_conditional(generator) and label is None:
        raise ValueError(_label_needed(generator_info or {}))
    channels = int(getattr(getattr(generator, "base", generator), "in_channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"protect needs a 1- or 3-channel generator, this one takes {channels}")
    inputs, unreadable = _scan(in_dir)
    targets = {p: out_dir / p.relative_to(in_dir).with_suffix(".png") for p in inputs}
    clashes = _clashing_targets(targets)
    _check_folders_inside(list(targets.values()), out_dir)
    report = ProtectReport(skipped=unreadable)
    with OutputLedger(out_dir) as ledger:
        if resume and not ledger.batches:
            raise FileNotFoundError(
                f"nothing to resume: {out_dir} holds no earlier protect run (no {MANIFEST}); "
                "run without --resume"
            )
        _check_existing(ledger, list(targets.values()), overwrite=overwrite, resume=resume)
        ledger.begin(
            {
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "input_dir": str(in_dir),
                "epsilon": epsilon,
                "epsilon_levels": budget_levels(epsilon),
                "label": label,
                "generator": generator_info or {},
            }
        )
        for entry in unreadable:
            ledger.skipped(entry)
        writer = _Writer(generator, channels, epsilon, label, tile, overlap, generator_info)
        start = time.perf_counter()
        try:
            for path in tqdm(inputs, desc="protect", disable=not progress):
                relative, target = str(path.relative_to(in_dir)), targets[path]
                if path in clashes:
                    reason = clashes[path]
                elif resume and target.exists():
                    report.resumed.append(relative)
                    continue
                else:
                    outcome = writer.write(path, target, ledger, max_pixels)
                    if isinstance(outcome, dict):
                        report.protected.append({"input": relative, **outcome})
                        continue
                    reason = outcome
                report.skipped.append({"input": relative, "reason": reason})
                ledger.skipped(report.skipped[-1])
        except OSError as error:
            raise OSError(
                f"stopped after protecting {len(report.protected)} image(s), each recorded "
                f"in {out_dir / MANIFEST}: {error}; fix that and rerun with --resume"
            ) from None
        finally:
            report.seconds = time.perf_counter() - start
            ledger.summary.update(
                seconds=report.seconds,
                images_per_second=report.images_per_second,
                resumed=len(report.resumed),
            )
    return report


def _check_existing(
    ledger: OutputLedger, targets: list[Path], *, overwrite: bool, resume: bool
) -> None:
    """Refuse, before anything is written, an existing output that is not protect's (its
    bytes not as a batch recorded them), and any existing output without overwrite/resume."""
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    recorded = ledger.recorded_hashes()
    problems = {t: problem for t in existing if (problem := ledger.owner_problem(t, recorded))}
    if problems:
        first, why = next(iter(problems.items()))
        raise OwnershipError(
            f"{len(problems)} output file(s) exist that are not protect's to replace (first: "
            f"{first}, {why}): they are never replaced, not even with --overwrite; move them "
            "or choose another output folder"
        )
    if existing and not (overwrite or resume):
        raise FileExistsError(
            f"{len(existing)} output file(s) from an earlier protect run already exist (first: "
            f"{existing[0]}): pass --resume to continue that run, or --overwrite to redo them"
        )


@dataclass
class _Writer:
    """Protects one input into its output: read, perturb, write a temporary PNG (journaled
    before it exists), read it back against the source, hash it, journal it, rename it in."""

    generator: nn.Module
    channels: int
    epsilon: float
    label: int | None
    tile: int
    overlap: int
    generator_info: dict[str, Any] | None

    def write(
        self, path: Path, target: Path, ledger: OutputLedger, max_pixels: int
    ) -> dict[str, Any] | str:
        """The output's manifest entry, or why the input was skipped."""
        try:
            image = _read(path, max_pixels)
            pixels, alpha = _pixels(image)
        except _Unsupported as reason:
            return str(reason)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError,
                SyntaxError) as error:  # fmt: skip
            return f"not a readable image: {error}"
        icc, mode = image.info.get("icc_profile"), image.mode
        del image  # the decoded pixels are all that is needed from here on
        source = str((self.generator_info or {}).get("path", "the generator"))
        try:
            protected = _protect_in_mode(
                self.generator, self.channels, pixels, self.epsilon, label=self.label,
                tile=self.tile, overlap=self.overlap, source=source,
            )  # fmt: skip
        except RuntimeError as error:  # this image defeats the generator (memory, its size)
            return f"the generator failed on it: {str(error).splitlines()[0][:200]}"
        picture = _to_image(protected, alpha)
        del protected
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        ledger.pending(temporary)
        try:
            picture.save(temporary, format="PNG", **({"icc_profile": icc} if icc else {}))
            del picture
            linf = self._check_written(temporary, pixels, target)
            entry = {
                "output": str(target.relative_to(ledger.out_dir)),
                "mode": mode,
                "width": int(pixels.shape[1]),
                "height": int(pixels.shape[0]),
                "linf_levels": linf,
                "bytes": temporary.stat().st_size,
                "sha256": file_sha256(temporary),
            }
            ledger.protected(entry)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        return entry

    def _check_written(self, written_path: Path, source: np.ndarray, target: Path) -> int:
        """‖written − source‖∞ in levels, the written file read back in its own mode against
        the source in its own; over the budget is an error (the file is not renamed in)."""
        with Image.open(written_path) as image:
            image.load()
            mode = "L" if image.mode in _GRAY_MODES else "RGB"
            linf = max(  # int16 differences, a strip at a time; gray sources against each channel
                int(np.abs(strip.astype(np.int16) - source[top : top + len(strip)]).max())
                for top, strip in _strips(image, mode)
            )
        if linf > budget_levels(self.epsilon):  # the invariant, checked on the bytes written
            raise BudgetError(
                f"{target} would change a pixel by {linf} levels, over the budget of "
                f"{budget_levels(self.epsilon)}; it was not written"
            )
        return linf
