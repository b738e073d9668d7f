"""Memory of ``protect`` per pixel of a large image, measured in fresh processes.

For each ``--sizes`` side, this script writes one square RGB PNG (a smooth random image, so the
PNG stays small as photos do) and protects it in a fresh child process with the
``cpu-paper-game`` generator (``unet-small``, seeded random weights) and ``--tile``; the child
reports its peak resident memory (``ru_maxrss``) before and after protecting. The generator's
work is one tile's whatever the size, so the growth of the peak between two sizes divided by
the growth of the pixel count is what each further pixel costs: the figure ``SECURITY.md``
states. Prints one JSON object: each size's peaks, and that slope.

    python benchmarks/protect_memory.py --sizes 2000 5000 [--tile 1024]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def _peak_bytes() -> int:
    """The process's peak resident memory (``ru_maxrss`` is in kB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _smooth_image(size: int, seed: int) -> Image.Image:
    coarse = np.random.default_rng(seed).integers(0, 256, (size // 50 + 2, size // 50 + 2, 3))
    small = Image.fromarray(coarse.astype(np.uint8), mode="RGB")
    return small.resize((size, size), Image.Resampling.BILINEAR)


def _protect_one(source: Path, tile: int, seed: int) -> dict[str, float]:
    """Protect the one image in ``source`` in this process; its peaks and time."""
    import torch

    from stackelberg.unlearnable.presets import PRESETS, build_game
    from stackelberg.unlearnable.protect import protect_folder

    torch.manual_seed(seed)
    generator = build_game(PRESETS["cpu-paper-game"], 3, 10).leader
    with torch.no_grad():  # an untrained generator outputs zero; give it a visible pattern
        for parameter in generator.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    with Image.open(next(source.iterdir())) as image:
        pixels = image.width * image.height
    before = _peak_bytes()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        report = protect_folder(
            generator,
            source,
            Path(out) / "out",
            epsilon=8 / 255,
            tile=tile,
            max_pixels=pixels,
            progress=False,
        )
    assert len(report.protected) == 1, report.skipped
    return {
        "pixels": pixels,
        "seconds": time.perf_counter() - start,
        "peak_before_bytes": before,
        "peak_after_bytes": _peak_bytes(),
        "linf_levels": report.protected[0]["linf_levels"],
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # the measuring process
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(_protect_one(args.child, args.tile, args.seed)))
        return
    print(f"seed {args.seed}; sizes {args.sizes}; tile {args.tile}", file=sys.stderr)
    runs = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "in"
            source.mkdir()
            _smooth_image(size, args.seed).save(source / "photo.png")  # here, not in the child
            command = [sys.executable, __file__, "--child", str(source), "--tile", str(args.tile)]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        run = json.loads(output.strip().splitlines()[-1])
        run["size"] = size
        run["protect_peak_bytes"] = run["peak_after_bytes"] - run["peak_before_bytes"]
        runs.append(run)
    first, last = runs[0], runs[-1]
    slope = (last["peak_after_bytes"] - first["peak_after_bytes"]) / max(
        last["pixels"] - first["pixels"], 1
    )
    print(json.dumps({"tile": args.tile, "runs": runs, "bytes_per_pixel": slope}, indent=2))


if __name__ == "__main__":
    main()
