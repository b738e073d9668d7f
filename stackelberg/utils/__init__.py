"""Utilities: peak-memory measurement."""

from stackelberg.utils.memory import peak_memory

__all__ = ["peak_memory"]
