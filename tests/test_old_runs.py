"""Run folders written before the application moved to ``stackelberg.unlearnable`` and before
options became records (0.1) still load and resume.

The files hold no pickled classes (tensors and JSON only, read with ``weights_only=True``), so
the move of the modules cannot reach them; what changed in them is the options: 0.1 stored
only the solver options a preset changes (``{"inner_steps": 2}``) and the game options as
given (``{}``), where 0.2 stores every field. A run folder is written here, then its three
copies of those options (``config.json``, ``training.json``, the checkpoint's config) are
rewritten as 0.1 wrote them, byte for byte the differences found between a run folder of
commit a21815b and one of this version.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from stackelberg.unlearnable.checkpoint import load_generator
from stackelberg.unlearnable.cli import main

ARGS = ["--preset", "smoke", "--dataset", "digits", "--no-progress"]
#: What 0.1 stored for the ``smoke`` preset's options.
OLD_SOLVER_OPTIONS = {"inner_steps": 2}


def _as_written_by_0_1(run: Path) -> None:
    config = json.loads((run / "config.json").read_text())
    config["preset"]["training"]["solver_options"] = OLD_SOLVER_OPTIONS
    config["preset"]["game_options"] = {}
    (run / "config.json").write_text(json.dumps(config))
    training = json.loads((run / "training.json").read_text())
    training["config"]["solver_options"] = OLD_SOLVER_OPTIONS
    (run / "training.json").write_text(json.dumps(training))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"]["solver_options"] = OLD_SOLVER_OPTIONS
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.slow
def test_a_0_1_run_folder_loads_and_resumes_to_the_uninterrupted_run(tmp_path: Path) -> None:
    old = tmp_path / "old"
    assert main(["train", str(old), *ARGS, "--epochs", "1"]) == 0
    _as_written_by_0_1(old)
    _, metadata = load_generator(old / "generator.pt")
    assert metadata["architecture"] == "unet-small" and metadata["epoch"] == 1
    assert main(["train", str(old), *ARGS, "--epochs", "2", "--resume"]) == 0
    assert torch.load(old / "checkpoint.pt", weights_only=True)["epoch"] == 2
    straight = tmp_path / "straight"
    assert main(["train", str(straight), *ARGS, "--epochs", "2"]) == 0
    resumed = torch.load(old / "generator.pt", weights_only=True)
    for name, tensor in torch.load(straight / "generator.pt", weights_only=True).items():
        assert torch.equal(resumed[name], tensor), name
    # And a changed option is still refused, named, after the 0.1 form is resolved.
    changed = tmp_path / "changed"
    shutil.copytree(old, changed)
    config = json.loads((changed / "config.json").read_text())
    config["preset"]["training"]["solver_options"] = {"inner_steps": 3}
    (changed / "config.json").write_text(json.dumps(config))
    assert main(["train", str(changed), *ARGS, "--epochs", "3", "--resume"]) == 1
