"""Throughput of ``stackelberg protect`` (images per second, PNG reading and writing included)
at two image sizes, on whatever device is given.

    python benchmarks/protect_throughput.py --generator results/gue-cpu-paper-game/generator.pt

Writes random images into a temporary folder (``--count`` per size), protects them, and prints
(and with ``--output``, writes) one JSON record per size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.protect import protect_folder
from stackelberg.utils.io import write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", type=Path, required=True)
    parser.add_argument("--sizes", default="32,512", help="comma-separated square sizes")
    parser.add_argument("--count", default="200,10", help="images per size, comma-separated")
    parser.add_argument("--label", type=int, default=0, help="for label-conditioned generators")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    generator, metadata = load_generator(args.generator, args.device)
    channels = int(metadata["in_channels"])
    records = []
    rng = np.random.default_rng(0)
    for size, count in zip(
        (int(s) for s in args.sizes.split(",")),
        (int(c) for c in args.count.split(",")),
        strict=True,
    ):
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp) / "in", Path(tmp) / "out"
            source.mkdir()
            shape = (size, size, 3) if channels == 3 else (size, size)
            for i in range(count):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                    source / f"{i:04d}.png"
                )
            report = protect_folder(
                generator,
                source,
                target,
                epsilon=float(metadata["epsilon"]),
                label=args.label if metadata["label_conditioned"] else None,
                progress=False,
            )
        records.append(
            {
                "size": size,
                "images": len(report.protected),
                "seconds": report.seconds,
                "images_per_second": report.images_per_second,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "generator": metadata["architecture"],
            }
        )
        print(json.dumps(records[-1]), flush=True)
    if args.output:
        write_json(args.output, records)


if __name__ == "__main__":
    main()
