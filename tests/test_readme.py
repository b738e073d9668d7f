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
