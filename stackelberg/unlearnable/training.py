"""Training the poison generator: the GUE game solved by any solver, with checkpoints.

Every epoch ends by recomputing the generator's BatchNorm running statistics on the training
images (``calibrate_batchnorm``: the eval-mode generator then makes the perturbations the game
optimized), then a checkpoint (generator, classifier, both optimizers, the solver's step
count, the RNG state, the history, the best generator so far), written atomically and loaded with
``weights_only=True``; ``GeneratorTraining.resume`` continues an interrupted run exactly
where it stopped (the data order of epoch ``e`` is drawn from ``seed`` and ``e`` alone). Every
``quick_test_every`` epochs a fresh victim trains briefly on the poisoned training set and is
scored on a clean held-out split; the generator that leaves the victim least accurate is kept
(GUE, Section 5: "a quick test ... keeps the best generator").
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from stackelberg.data.folders import ImageDataset
from stackelberg.solvers import (
    CG,
    SOLVERS,
    BackGradientOptions,
    BOMEOptions,
    GDAOptions,
    SOBAOptions,
    TotalGradientOptions,
    make,
    options_for,
)
from stackelberg.solvers.base import Solver
from stackelberg.solvers.options import SolverOptions
from stackelberg.unlearnable.apply import calibrate_batchnorm, poison_images
from stackelberg.unlearnable.game import UnlearnableGame
from stackelberg.unlearnable.victim import VictimSchedule, train_victim
from stackelberg.utils import distributed
from stackelberg.utils.files import FileFormatError, load_tensors
from stackelberg.utils.io import write_json, write_torch

__all__ = [
    "GUE_SOLVER_OPTIONS",
    "GeneratorTraining",
    "TrainingConfig",
    "differing_keys",
]

#: Each solver's options for the GUE game. BOME's are the official GUE code's (T = 10 inner
#: Adam steps at lr 1e-4, η = 1.5, φ = η‖∇q‖²); the paper's text says inner lr 1e-3.
GUE_SOLVER_OPTIONS: dict[str, SolverOptions] = {
    "bome": BOMEOptions(inner_steps=10, inner_lr=1e-4, inner_optimizer="adam", eta=1.5),
    "backgradient": BackGradientOptions(
        inner_steps=5, inner_lr=0.01, mode="store", follower_steps=1
    ),
    "total_gradient": TotalGradientOptions(linear_solver=CG(max_iterations=10), damping=1.0),
    "soba": SOBAOptions(damping=1.0),
    "gda": GDAOptions(alternating=True),
}


def __getattr__(name: str) -> Any:
    """Deprecated names: ``SOLVER_DEFAULTS`` (now ``GUE_SOLVER_OPTIONS``, option records)
    and ``make_solver`` (now ``stackelberg.solvers.make`` with those records)."""
    if name == "SOLVER_DEFAULTS":
        warnings.warn(
            "SOLVER_DEFAULTS is deprecated; use GUE_SOLVER_OPTIONS (option records)",
            DeprecationWarning,
            stacklevel=2,
        )
        return {k: v.to_dict() for k, v in GUE_SOLVER_OPTIONS.items()}
    if name == "make_solver":
        warnings.warn(
            "make_solver is deprecated; use stackelberg.solvers.make(name, game, "
            "leader_optimizer, follower_optimizer, GUE_SOLVER_OPTIONS[name], **options)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _make_gue_solver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_gue_solver(
    name: str,
    game: UnlearnableGame,
    generator_optimizer: torch.optim.Optimizer,
    classifier_optimizer: torch.optim.Optimizer,
    **options: Any,
) -> Solver:
    return make(
        name,
        game,
        generator_optimizer,
        classifier_optimizer,
        GUE_SOLVER_OPTIONS.get(name),
        **options,
    )


def gue_solver_options(name: str, overrides: dict[str, Any]) -> SolverOptions:
    """The options a GUE run of solver ``name`` uses: ``GUE_SOLVER_OPTIONS`` updated by
    ``overrides``, checked."""
    return options_for(name, GUE_SOLVER_OPTIONS.get(name), **overrides)


@dataclass(frozen=True)
class TrainingConfig:
    """How the generator trains. Defaults are the GUE paper's CIFAR-10 settings.

    Frozen, and checked once when built. ``solver_options`` is the solver's option record
    (``BOMEOptions``, ...), built once from what is given: a record of the solver's class is
    taken as it is; a mapping (``{"inner_steps": 2}``, or the full ``to_dict()`` form a
    checkpoint stores) updates ``GUE_SOLVER_OPTIONS[solver]``. Change a config with
    ``dataclasses.replace`` or, for another solver, ``with_solver``.
    """

    epochs: int = 50
    batch_size: int = 256
    solver: str = "bome"
    solver_options: SolverOptions | Mapping[str, Any] = field(default_factory=dict)
    generator_optimizer: str = "sgd"
    generator_lr: float = 0.1
    classifier_lr: float = 0.01
    quick_test_every: int = 0
    quick_test: VictimSchedule = field(default_factory=lambda: VictimSchedule.scaled(10, lr=0.05))
    log_every: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("epochs, batch_size and log_every must be >= 1")
        if self.generator_optimizer not in ("sgd", "adam"):
            raise ValueError(
                f"generator_optimizer must be 'sgd' or 'adam'; got {self.generator_optimizer!r}"
            )
        if self.generator_lr <= 0 or self.classifier_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.quick_test_every < 0:
            raise ValueError("quick_test_every must be >= 0 (0: never)")
        if isinstance(self.quick_test, Mapping):
            object.__setattr__(self, "quick_test", VictimSchedule(**self.quick_test))
        options = self.solver_options
        record = (
            options_for(self.solver, options)
            if isinstance(options, SolverOptions)
            else gue_solver_options(self.solver, dict(options))
        )
        object.__setattr__(self, "solver_options", record)

    @property
    def options(self) -> SolverOptions:
        """``solver_options``, typed as the record it always is once built."""
        assert isinstance(self.solver_options, SolverOptions)
        return self.solver_options

    def with_solver(self, solver: str) -> tuple[TrainingConfig, dict[str, Any], list[str]]:
        """This config for ``solver``: the options this one sets beyond its solver's GUE
        defaults are kept where ``solver`` has them too. Returns the new config, the options
        kept and the names dropped (options ``solver`` does not have)."""
        if solver == self.solver:
            return self, {}, []
        base = GUE_SOLVER_OPTIONS.get(self.solver)
        defaults = base.to_dict() if base is not None else options_for(self.solver).to_dict()
        own = {k: v for k, v in self.options.to_dict().items() if defaults.get(k) != v}
        accepted = set(SOLVERS[solver].Options.accepted()) if solver in SOLVERS else set()
        kept = {k: v for k, v in own.items() if k in accepted}
        dropped = sorted(set(own) - set(kept))
        return dataclasses.replace(self, solver=solver, solver_options=kept), kept, dropped

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the solver options as their record's ``to_dict()`` (every field, a
        linear solver as its own dict), which the config reads back."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            **fields,
            "solver_options": self.options.to_dict(),
            "quick_test": dataclasses.asdict(self.quick_test),
        }


class GeneratorTraining:
    """Train ``game``'s generator on ``train`` (uint8 images) with checkpoints and quick tests.

    Args:
        game: the unlearnable-example game (generator and classifier on one device).
        config: the training settings.
        train: the training images the generator learns to poison.
        validation: clean held-out images for the quick test (never the test split).
        victim_factory: builds a fresh victim for the quick test.
        run_dir: where ``checkpoint.pt`` and ``training.json`` go (``None``: nowhere).
    """

    def __init__(
        self,
        game: UnlearnableGame,
        config: TrainingConfig,
        train: ImageDataset,
        *,
        validation: ImageDataset | None = None,
        victim_factory: Callable[[], nn.Module] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        if config.quick_test_every and (validation is None or victim_factory is None):
            raise ValueError("quick tests need a validation split and a victim_factory")
        if len(train) < config.batch_size:
            raise ValueError(
                f"the training set has {len(train)} images, fewer than one batch "
                f"({config.batch_size})"
            )
        self.game, self.config = game, config
        self.train, self.validation = train, validation
        self.victim_factory = victim_factory
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.device = next(game.parameters()).device
        generator, classifier = game.leader, game.follower
        if config.generator_optimizer == "sgd":
            self.generator_optimizer: torch.optim.Optimizer = torch.optim.SGD(
                generator.parameters(), lr=config.generator_lr
            )
        else:
            self.generator_optimizer = torch.optim.Adam(
                generator.parameters(), lr=config.generator_lr
            )
        self.classifier_optimizer = torch.optim.SGD(
            classifier.parameters(), lr=config.classifier_lr
        )
        parallel = distributed.world_size() > 1
        if parallel and config.batch_size % distributed.world_size():
            raise ValueError(
                f"batch_size {config.batch_size} must be divisible by the "
                f"{distributed.world_size()} processes"
            )
        # Under torchrun each rank trains on its shard of every global batch and the solver
        # averages gradients over ranks (BOME before computing λ).
        self.solver = make(
            config.solver,
            game,
            self.generator_optimizer,
            self.classifier_optimizer,
            config.options,
            gradient_reducer=distributed.all_reduce_mean if parallel else None,
        )
        self.epoch = 0
        self.history: list[dict[str, float]] = []
        self.quick_tests: list[dict[str, float]] = []
        self.best_score = float("inf")
        self.best_epoch = -1
        self.best_generator: dict[str, torch.Tensor] | None = None

    # -- checkpoints -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "checkpoint.pt"

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors, numbers and strings only."""
        return {
            "format": 1,
            "epoch": self.epoch,
            "solver": self.solver.state_dict(),
            "generator": self.game.leader.state_dict(),
            "classifier": self.game.follower.state_dict(),
            "generator_optimizer": self.generator_optimizer.state_dict(),
            "classifier_optimizer": self.classifier_optimizer.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "quick_tests": self.quick_tests,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_generator": self.best_generator,
            "epsilon": self.game.epsilon,
            "config": self.config.to_dict(),
            **(
                {"follower_transforms": transforms.state_dict()}
                if (transforms := self.game.follower_transforms) is not None
                else {}
            ),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != 1:
            raise ValueError("not a stackelberg generator-training checkpoint (format 1)")
        self.game.leader.load_state_dict(state["generator"])
        self.game.follower.load_state_dict(state["classifier"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.classifier_optimizer.load_state_dict(state["classifier_optimizer"])
        if "solver" in state:
            self.solver.load_state_dict(state["solver"])
        else:  # written before solvers had a state dict: the step count was all there was
            self.solver.steps_taken = int(state["solver_steps"])
        if self.game.follower_transforms is not None:
            if "follower_transforms" not in state:
                raise ValueError(
                    "the checkpoint was trained without follower transforms; this game has them"
                )
            self.game.follower_transforms.load_state_dict(state["follower_transforms"])
        self.epoch = int(state["epoch"])
        self.history = list(state["history"])
        self.quick_tests = list(state["quick_tests"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_generator = state["best_generator"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])

    def save(self) -> None:
        """Write the checkpoint and ``training.json`` (rank 0 only under torchrun)."""
        if self.checkpoint_path is not None and distributed.is_main_process():
            write_torch(self.checkpoint_path, self.state_dict())
            write_json(
                self.run_dir / "training.json",  # type: ignore[operator]
                {
                    "epoch": self.epoch,
                    "history": self.history,
                    "quick_tests": self.quick_tests,
                    "best_epoch": self.best_epoch,
                    "config": self.config.to_dict(),
                },
            )

    def resume(self) -> bool:
        """Load ``run_dir/checkpoint.pt`` if it exists (``weights_only=True``); True if loaded."""
        path = self.checkpoint_path
        if path is None or not path.is_file():
            return False
        state = load_tensors(path, "a training checkpoint", map_location=self.device)
        if not isinstance(state, dict) or state.get("format") != 1:
            raise FileFormatError(
                f"{path} is not a training checkpoint: it holds no format-1 training state"
            )
        saved, current = state.get("config"), self.config.to_dict()
        differing = (
            [] if saved is None else differing_keys(_comparable(saved), _comparable(current))
        )
        if state.get("epsilon") is not None and float(state["epsilon"]) != self.game.epsilon:
            differing.append(f"epsilon ({state['epsilon']} → {self.game.epsilon})")
        if differing:
            raise ValueError(
                f"{path} was written by a run with other settings: {', '.join(differing)}; "
                "resume with the same settings, or start a new run folder"
            )
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise FileFormatError(
                f"{path} does not fit this run's models and data ({type(error).__name__}: "
                f"{reason[:200]}); was the data changed (--data-dir), or the file damaged?"
            ) from None
        return True

    # -- training ----------------------------------------------------------------------------

    def _batches(self, epoch: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train), generator=generator)
        size = self.config.batch_size
        return [order[i : i + size] for i in range(0, len(order) - size + 1, size)]

    def _batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch ``index`` (all of it in one process)."""
        index = distributed.shard(index)
        x = self.train.images[index].to(self.device).float() / 255.0
        return x, self.train.labels[index].to(self.device)

    def quick_test(self) -> float:
        """Clean validation accuracy of a fresh victim briefly trained on the poisoned set."""
        assert self.validation is not None and self.victim_factory is not None
        poisoned = poison_images(self.game.leader, self.train.images, self.train.labels)
        victim = self.victim_factory().to(self.device)
        result = train_victim(
            victim,
            poisoned,
            self.train.labels,
            self.validation.images,
            self.validation.labels,
            self.config.quick_test,
            seed=self.config.seed,
            progress=False,
        )
        return result.final

    def run(self, progress: bool = True) -> list[dict[str, float]]:
        """Train until ``config.epochs`` epochs are done (from wherever a resumed run stands)."""
        config = self.config
        while self.epoch < config.epochs:
            self.game.train()
            batches = self._batches(self.epoch)
            bar = tqdm(
                batches,
                desc=f"generator epoch {self.epoch + 1}/{config.epochs}",
                disable=not progress,
                leave=False,
            )
            for index in bar:
                batch = self._batch(index)
                if self.game.follower_transforms is not None:
                    self.game.follower_transforms.resample()  # one victim pipeline per step
                info = self.solver.step(batch)
                if self.solver.steps_taken % config.log_every == 0:
                    info.update(self.game.diagnostics(batch))
                    info["step"] = self.solver.steps_taken
                    info["epoch"] = self.epoch
                    self.history.append(info)
                    gap = info["poisoned_accuracy"] - info["clean_accuracy"]
                    bar.set_postfix(gap=f"{gap:+.2f}", clean=f"{info['clean_accuracy']:.2f}")
            self.epoch += 1
            # The eval-mode generator (quick tests, checkpoints, exported poisons) reads the
            # BatchNorm running statistics, which lag behind the weights during training.
            calibrate_batchnorm(self.game.leader, self.train.images, self.train.labels)
            if config.quick_test_every and self.epoch % config.quick_test_every == 0:
                score = self.quick_test()
                self.quick_tests.append({"epoch": self.epoch, "validation_accuracy": score})
                if score < self.best_score:
                    self.best_score, self.best_epoch = score, self.epoch
                    self.best_generator = {
                        k: v.detach().clone() for k, v in self.game.leader.state_dict().items()
                    }
                if progress:
                    tqdm.write(
                        f"epoch {self.epoch}: quick-test victim validation accuracy "
                        f"{score:.3f} (best {self.best_score:.3f} at epoch {self.best_epoch})"
                    )
            self.save()
        return self.history

    def use_best_generator(self) -> int:
        """Load the best quick-tested generator into the game (if any); returns its epoch
        (the last epoch when there was no quick test)."""
        if self.best_generator is None:
            return self.epoch
        self.game.leader.load_state_dict(self.best_generator)
        return self.best_epoch


def differing_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts, each with both values
    (``"training.generator_lr (1.0 → 0.1)"``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        keys = sorted(set(saved) | set(current))
        return [
            d for k in keys for d in differing_keys(saved.get(k), current.get(k), f"{prefix}{k}.")
        ]
    if _normalized(saved) != _normalized(current):
        return [f"{prefix.rstrip('.')} ({saved!r} → {current!r})"]
    return []


def _normalized(value: Any) -> Any:
    """JSON round trips turn tuples into lists; compare them as equal."""
    if isinstance(value, tuple | list):
        return [_normalized(v) for v in value]
    return value


def with_resolved_options(config: dict[str, Any]) -> dict[str, Any]:
    """A saved ``TrainingConfig.to_dict()`` with its solver options resolved to every field,
    so that a run saved with only the changed ones (``{"inner_steps": 2}``, as runs before
    0.2 were) compares equal to the same options spelled out. An unknown solver or option is
    left as written, to be compared (and reported) as such."""
    try:
        options = gue_solver_options(config["solver"], config.get("solver_options", {}))
    except (KeyError, TypeError, ValueError):
        return dict(config)
    return {**config, "solver_options": options.to_dict()}


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that must match to resume (the epoch count may grow), with the solver's
    options resolved."""
    return {k: v for k, v in with_resolved_options(config).items() if k != "epochs"}
