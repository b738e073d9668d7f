"""Games: toys with closed-form answers, real bilevel problems (data hyper-cleaning,
hyperparameter selection, class reweighting), data poisoning and adversarial training. Each
submodule is imported on first use. The unlearnable-example game moved to
``stackelberg.unlearnable`` (``stackelberg.games.unlearnable`` still works, with a warning)."""

import importlib
from typing import Any

__all__ = [
    "adversarial",
    "hyper_cleaning",
    "hyperparameters",
    "poisoning",
    "reweighting",
    "toys",
]


def __getattr__(name: str) -> Any:
    if name in __all__ or name == "unlearnable":  # the latter via stackelberg._moved
        module = importlib.import_module(f"stackelberg.games.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stackelberg.games' has no attribute {name!r}")
