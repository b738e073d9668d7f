"""Games: toys with closed-form answers, data poisoning, adversarial training."""

from stackelberg.games import adversarial, poisoning, toys, unlearnable

__all__ = ["adversarial", "poisoning", "toys", "unlearnable"]
