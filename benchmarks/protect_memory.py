"""Peak memory of ``protect`` on one large image, measured in a fresh process.

Writes one ``--size`` × ``--size`` RGB PNG (a smooth random image, so the PNG stays small as
photos do), builds the ``cpu-paper-game`` generator (``unet-small``, seeded random weights),
protects the image with ``--tile`` and prints one JSON object: the peak resident memory of the
process (``ru_maxrss``) before and after protecting, their difference, and that difference per
pixel.

    python benchmarks/protect_memory.py --size 3000 [--tile 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stackelberg.unlearnable.presets import PRESETS, build_game
from stackelberg.unlearnable.protect import protect_folder


def _peak_bytes() -> int:
    """The process's peak resident memory (``ru_maxrss`` is in kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _smooth_image(size: int, seed: int) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, (size // 50 + 2, size // 50 + 2, 3))
    small = Image.fromarray(coarse.astype(np.uint8), mode="RGB")
    return small.resize((size, size), Image.Resampling.BILINEAR)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, required=True, help="side of the square image")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    generator = build_game(PRESETS["cpu-paper-game"], 3, 10).leader
    with torch.no_grad():  # an untrained generator outputs zero; give it a visible pattern
        for parameter in generator.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "in"
        source.mkdir()
        _smooth_image(args.size, args.seed).save(source / "photo.png")
        before = _peak_bytes()
        start = time.perf_counter()
        report = protect_folder(
            generator,
            source,
            Path(folder) / "out",
            epsilon=8 / 255,
            tile=args.tile,
            max_pixels=args.size**2,
            progress=False,
        )
        seconds = time.perf_counter() - start
        after = _peak_bytes()
    assert len(report.protected) == 1, report.skipped
    pixels = args.size**2
    print(
        json.dumps(
            {
                "size": args.size,
                "pixels": pixels,
                "tile": args.tile,
                "threads": torch.get_num_threads(),
                "seconds": seconds,
                "peak_before_bytes": before,
                "peak_after_bytes": after,
                "protect_peak_bytes": after - before,
                "bytes_per_pixel": (after - before) / pixels,
                "linf_levels": report.protected[0]["linf_levels"],
            }
        )
    )


if __name__ == "__main__":
    main()
