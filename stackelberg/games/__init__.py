"""Games: toys with closed-form answers, real bilevel problems (data hyper-cleaning,
hyperparameter selection, class reweighting), data poisoning, adversarial training, and the
unlearnable-example game. Each submodule is imported on first use."""

import importlib
from typing import Any

__all__ = [
    "adversarial",
    "hyper_cleaning",
    "hyperparameters",
    "poisoning",
    "reweighting",
    "toys",
    "unlearnable",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        module = importlib.import_module(f"stackelberg.games.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stackelberg.games' has no attribute {name!r}")
