"""Peak memory of a call, on CUDA or on the CPU (Linux).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` during the call minus the memory
allocated at its start. On the CPU it is the resident-set high-water mark during the call
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before it) minus the resident set at
its start. Other allocations of the process count too, so measure in a process doing nothing
else.

glibc's malloc keeps freed activations in its heap (small long-lived tensors pin it), so the
resident set can overstate what is live. A measuring script that wants tight CPU numbers calls
``return_freed_memory_to_os()`` once at its start: it lowers glibc's mmap threshold to 16 KiB,
so that tensors of that size or more go back to the OS when freed. That is a process-wide
setting, so the library never makes it on its own.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

__all__ = ["peak_memory", "return_freed_memory_to_os"]

T = TypeVar("T")
_STATUS = Path("/proc/self/status")


def return_freed_memory_to_os(threshold: int = 16 * 1024) -> bool:
    """Lower glibc's mmap threshold to ``threshold`` bytes for the whole process (allocations
    of that size or more are then mapped, and unmapped when freed), so the resident set tracks
    live memory. Returns whether it was applied (``False`` off glibc)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        m_mmap_threshold = -3
        return bool(ctypes.CDLL(name).mallopt(m_mmap_threshold, threshold))
    except (OSError, AttributeError):
        return False


def _status_bytes(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in {_STATUS}")


def peak_memory(fn: Callable[[], T], device: torch.device | str = "cpu") -> tuple[T, int]:
    """Run ``fn()``; return its result and the extra peak memory (bytes) it needed.

    Raises:
        RuntimeError: CPU measurement needs Linux's ``/proc/self/status``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, max(torch.cuda.max_memory_allocated(device) - start, 0)
    if not _STATUS.exists():
        raise RuntimeError("CPU peak memory needs Linux (/proc/self/status)")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    start = _status_bytes("VmRSS")
    result = fn()
    return result, max(_status_bytes("VmHWM") - start, 0)
