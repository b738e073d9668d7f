"""Games: toys with closed-form answers, data poisoning, adversarial training."""

from stackelberg.games import adversarial, poisoning, toys

__all__ = ["adversarial", "poisoning", "toys"]
