"""Games: toys with closed-form answers, data poisoning, adversarial training."""

from stackelberg.games import poisoning, toys

__all__ = ["poisoning", "toys"]
