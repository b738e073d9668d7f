"""Files written before the application moved to ``stackelberg.unlearnable`` (0.1, by the
``stackelberg train`` of commit a21815b) still load and resume: ``fixtures/run-0.1-smoke`` is
that command's run folder (``--preset smoke --dataset digits --epochs 1``), committed as it
wrote it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.cli import main

OLD_RUN = Path(__file__).parent / "fixtures" / "run-0.1-smoke"


def test_a_generator_saved_by_0_1_loads_and_poisons_within_its_budget() -> None:
    generator, metadata = load_generator(OLD_RUN / "generator.pt")
    assert metadata["architecture"] == "unet-small" and metadata["epoch"] == 1
    images = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        delta = generator(images)
    assert delta.shape == images.shape
    assert float(delta.abs().max()) <= metadata["epsilon"] + 1e-6


@pytest.mark.slow
def test_a_training_checkpoint_saved_by_0_1_resumes_to_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """Resumed from 0.1's epoch-1 checkpoint, epoch 2 gives the generator that this version
    trains in one go: the checkpoint's every state (generator, classifier, both optimizers,
    the solver's, the RNG) carried over. Equal up to float rounding, not to the bit: the
    fixture's first epoch ran in another process (its thread count and CPU kernels may differ
    from this one's; a resume within one process is compared bit for bit in
    ``test_unlearnable_training``)."""
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    base = ["--preset", "smoke", "--dataset", "digits", "--no-progress", "--epochs", "2"]
    assert main(["train", str(run), *base, "--resume"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 2
    straight = tmp_path / "straight"
    assert main(["train", str(straight), *base]) == 0
    resumed = torch.load(run / "generator.pt", weights_only=True)
    for name, tensor in torch.load(straight / "generator.pt", weights_only=True).items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-3, atol=1e-4, msg=name)
