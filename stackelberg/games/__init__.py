"""Games: the toy games with closed-form answers (``stackelberg.games.toys``), and more."""

from stackelberg.games import toys

__all__ = ["toys"]
