"""The README's "define your own game" snippet runs and lands on the Stackelberg point."""

from __future__ import annotations

from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippet_solves_the_duopoly() -> None:
    text = README.read_text()
    snippet = (
        text.split("## Define your own game", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    )
    namespace: dict = {}
    exec(
        compile(snippet.replace("steps=200)", "steps=200, progress=False)"), "README", "exec"),
        namespace,
    )
    game = namespace["game"]
    assert float(game.leader.value.detach()) == pytest.approx(4.5, rel=1e-3)
    assert float(game.follower.value.detach()) == pytest.approx(2.25, rel=1e-3)


def test_readme_solvers_snippet_reaches_the_closed_form_and_saves_its_state() -> None:
    section = README.read_text().split("## Solvers", 1)[1]
    snippet = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(snippet, "README", "exec"), namespace)
    game = namespace["game"]
    expected = game.solution().leader
    assert float((game.leader.value.detach() - expected).abs().max()) < 1e-3
    assert namespace["state"]["solver"] == "TotalGradient" and namespace["state"]["v"] is not None


def test_readme_unlearnable_snippet_trains_poisons_and_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np

    text = README.read_text()
    section = text.split("## The flagship: Game Unlearnable Examples", 1)[1]
    snippet = section.split("```python", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)  # the snippet writes into results/my-run
    namespace: dict = {}
    exec(compile(snippet, "README", "exec"), namespace)
    assert namespace["training"].epoch == 2
    assert (tmp_path / "results" / "my-run" / "checkpoint.pt").is_file()
    exported = np.load(tmp_path / "results" / "my-run" / "poisoned.npz")
    clean = namespace["data"]["train"].images.permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(exported["x"].astype(int) - clean).max() <= 8


def test_readme_comparison_suite_snippet_crafts_em_and_trains_a_defended_victim() -> None:
    text = README.read_text()
    section = text.split("### The comparison suite", 1)[1]
    snippet = section.split("```python", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(
        compile(
            snippet.replace("VictimSchedule.scaled(5)", "VictimSchedule.scaled(1)"),
            "README",
            "exec",
        ),
        namespace,
    )
    assert namespace["poison"].info["converged"]
    assert 0.0 <= namespace["result"].final <= 1.0
