"""The examples run end to end and print what they promise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_define_a_game_finds_the_stackelberg_point(tmp_path: Path) -> None:
    output = tmp_path / "duopoly.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "define_a_game.py"), "--json", str(output)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "seed=0" in completed.stdout
    results = json.loads(output.read_text())
    for name in ("BOME", "BackGradient", "TotalGradient"):
        assert results["solvers"][name]["q1"] == pytest.approx(4.5, rel=1e-2)
        assert results["solvers"][name]["q2"] == pytest.approx(2.25, rel=1e-2)
    assert results["solvers"]["GDA"]["q1"] == pytest.approx(3.0, rel=1e-4)
    assert results["closed form"]["q1"] == 4.5
