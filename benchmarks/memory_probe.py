"""Peak memory of one BackGradient hypergradient, measured in a fresh process.

The follower is a small MLP (32 → 256 → 1) fitted by mean squared error on a batch of 512
inputs scaled by the leader's per-feature factors ``exp(w)``; the leader's loss is the MLP's
error on a validation batch. One BackGradient step (hypergradient, leader update, one
follower step) unrolls ``--inner-steps`` follower steps.

On the CPU the peak is the process's resident-set high-water mark during the call (Linux
``VmHWM``, reset through ``/proc/self/clear_refs`` just before it) minus the resident set at
its start, after a warm-up call with 2 inner steps. glibc's malloc would otherwise keep
freed activations in its heap (small long-lived tensors pin it), so the probe first lowers its
mmap threshold to 16 KiB: every tensor of that size or more is returned to the OS when freed,
and the high-water mark follows the live tensors; on CUDA it is
``torch.cuda.max_memory_allocated`` over the same warm-up. Prints one JSON object.

    python benchmarks/memory_probe.py --mode store --inner-steps 100 [--device cuda]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
from pathlib import Path

import torch

import stackelberg as sg


class ScaledRegression(sg.Game):
    """Leader: log input scales; follower: an MLP regressor."""

    def __init__(self, features: int = 32, hidden: int = 256, batch: int = 512) -> None:
        follower = torch.nn.Sequential(
            torch.nn.Linear(features, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1)
        )
        super().__init__(sg.Variable(torch.zeros(features)), follower)
        generator = torch.Generator().manual_seed(0)
        target = torch.randn(features, generator=generator)
        for split in ("train", "val"):
            x = torch.randn(batch, features, generator=generator)
            self.register_buffer(f"x_{split}", x)
            self.register_buffer(f"y_{split}", torch.sin(x @ target))

    def _error(self, leader, follower, x, y):
        prediction = follower(x * torch.exp(leader())).squeeze(-1)
        return torch.mean((prediction - y) ** 2)

    def follower_loss(self, leader, follower, batch):
        return self._error(leader, follower, self.x_train, self.y_train)

    def leader_loss(self, leader, follower, batch):
        return self._error(leader, follower, self.x_val, self.y_val)


def lower_mmap_threshold(threshold: int = 16 * 1024) -> bool:
    """Ask glibc to serve allocations of ``threshold`` bytes or more by mmap; False elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, threshold))


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def reset_peak(device: torch.device) -> int:
    """Reset the peak counter; return the memory in use now."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    return _status_bytes("VmRSS")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _status_bytes("VmHWM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("store", "checkpoint", "reverse"), required=True)
    parser.add_argument("--inner-steps", type=int, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--inner-lr",
        type=float,
        default=0.002,
        help="small enough that undoing 1000 steps in reverse mode stays finite",
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    args = parser.parse_args()
    mmap_threshold_lowered = lower_mmap_threshold()
    torch.manual_seed(0)
    device = torch.device(args.device)
    game = ScaledRegression().to(device, getattr(torch, args.dtype))

    def solver(inner_steps: int) -> sg.BackGradient:
        return sg.BackGradient(
            game,
            torch.optim.SGD(game.leader.parameters(), lr=0.1),
            torch.optim.SGD(game.follower.parameters(), lr=0.1),
            inner_steps=inner_steps,
            inner_lr=args.inner_lr,
            mode=args.mode,
        )

    solver(2).step()
    baseline = reset_peak(device)
    info = solver(args.inner_steps).step()
    peak = peak_bytes(device)
    parameters = sum(p.numel() for p in game.follower.parameters())
    print(
        json.dumps(
            {
                "mode": args.mode,
                "inner_steps": args.inner_steps,
                "device": str(device),
                "follower_parameters": parameters,
                "baseline_bytes": baseline,
                "peak_bytes": peak,
                "extra_bytes": max(peak - baseline, 0),
                "dtype": args.dtype,
                "mmap_threshold_lowered": mmap_threshold_lowered,
                "reconstruction_error": info.get("reconstruction_error"),
            }
        )
    )


if __name__ == "__main__":
    main()
