"""Turn a pytest-benchmark JSON file from ``benchmarks/`` into the README's Markdown tables.

python benchmarks/report.py results/benchmarks.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the file written by --benchmark-json")
    data = json.loads(parser.parse_args().results.read_text())
    machine = data["machine_info"]
    cpu = machine.get("cpu", {})
    print(
        f"Machine: {cpu.get('brand_raw', machine.get('processor', '?'))}, "
        f"{cpu.get('count', '?')} logical cores, Python {machine.get('python_version')}, "
        f"run {data.get('datetime', '?')}\n"
    )
    by_test: dict[str, dict] = {}
    for bench in data["benchmarks"]:
        by_test[bench["name"]] = bench

    print(
        "| solver | time per step (ms, median) | steps to 1e-2 | steps to 1e-3 "
        "| wall time to 1e-3 (s) | error at the end | Hessian-vector products |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    names = ("GDA", "BOME", "BOME-decay", "BackGradient", "TotalGradient", "TotalGradient-cold")
    for name in (*names, "SOBA"):
        step = by_test.get(f"test_time_per_step[{name}]")
        tol = by_test.get(f"test_time_to_tolerance[{name}]")
        if step is None or tol is None:
            continue
        info = tol["extra_info"]
        steps = str(info["steps"]) if info["reached"] else f"not within {info['budget']}"
        wall = f"{info['seconds']:.2f}" if info["reached"] else f"({info['seconds']:.2f})"
        coarse = info["steps_to_1e_2"] or f"not within {info['budget']}"
        products = f"{info['matvecs']:.0f}" if info.get("matvecs") else "—"
        print(
            f"| {name} | {1e3 * step['stats']['median']:.2f} | {coarse} | {steps} | {wall} | "
            f"{info['final_error']:.1e} | {products} |"
        )

    print("\nBackGradient, extra peak memory of one step (MLP follower, 8 705 parameters):\n")
    print("| mode | inner_steps = 10 | 100 | 1000 |")
    device = "?"
    print("|---|---:|---:|---:|")
    for mode in ("store", "checkpoint", "reverse"):
        cells = []
        for steps in (10, 100, 1000):
            bench = by_test.get(f"test_backgradient_memory[{mode}-{steps}]")
            if bench is None:
                cells.append("—")
                continue
            info = bench["extra_info"]
            cells.append(f"{info['extra_bytes'] / 2**20:.1f} MiB")
            device = info["device"]
        print(f"| {mode} | " + " | ".join(cells) + " |")
    print(f"\n(memory measured on {device})")


if __name__ == "__main__":
    main()
