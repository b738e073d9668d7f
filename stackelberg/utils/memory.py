"""Peak memory of a call, on CUDA or on the CPU (Linux).

On CUDA the peak is ``torch.cuda.max_memory_allocated`` during the call minus the memory
allocated at its start. On the CPU it is the resident-set high-water mark during the call
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before it) minus the resident set at
its start. glibc's malloc would otherwise keep freed activations in its heap (small long-lived
tensors pin it) and the resident set would overstate what is live, so the first CPU
measurement lowers glibc's mmap threshold to 16 KiB: tensors of that size or more are then
returned to the OS when freed. Other allocations of the process count too, so measure in a
process doing nothing else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

__all__ = ["peak_memory"]

T = TypeVar("T")
_STATUS = Path("/proc/self/status")
_mmap_threshold_lowered = False


def _lower_mmap_threshold(threshold: int = 16 * 1024) -> None:
    global _mmap_threshold_lowered
    if _mmap_threshold_lowered:
        return
    name = ctypes.util.find_library("c")
    if name is not None:
        try:
            m_mmap_threshold = -3
            ctypes.CDLL(name).mallopt(m_mmap_threshold, threshold)
        except (OSError, AttributeError):
            pass
    _mmap_threshold_lowered = True


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
    _lower_mmap_threshold()
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS
    start = _status_bytes("VmRSS")
    result = fn()
    return result, max(_status_bytes("VmHWM") - start, 0)
