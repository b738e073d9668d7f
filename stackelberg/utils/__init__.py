"""Utilities: peak-memory measurement, atomic file writes."""

from stackelberg.utils.io import atomic_directory, atomic_path, write_json, write_text, write_torch
from stackelberg.utils.memory import peak_memory, return_freed_memory_to_os

__all__ = [
    "atomic_directory",
    "atomic_path",
    "peak_memory",
    "return_freed_memory_to_os",
    "write_json",
    "write_text",
    "write_torch",
]
