"""The documentation's code runs, the README's quick start is the tested file verbatim, and
the README stays a five-minute read that never points outside the repository."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import HANG_TIMEOUT, fake_mnist

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
#: Which page shows each example: ``<!-- example: NAME -->`` right above its code block.
EXAMPLES = {
    "quickstart": "index.md",
    **{
        name: "tutorial.md"
        for name in ("duopoly", "duopoly_solve", "duopoly_nash", "duopoly_capacity")
    },
    **{
        name: "choose-a-solver.md"
        for name in ("choose_data", "choose_run", "choose_steps", "choose_budget")
    },
    **{
        name: "howto-solver.md"
        for name in ("custom_options", "custom_step", "custom_use", "custom_register")
    },
    "resume_run": "howto-resume.md",
    "gpu_solve": "howto-gpu.md",
    "make_and_resume": "solvers.md",
    "hyper_cleaning": "problems.md",
    "train_and_export": "unlearnable.md",
    "comparison_suite": "unlearnable.md",
}
_BLOCK = re.compile(r"(?:<!-- example: (\w+) -->\n)?```python\n(.*?)```", re.DOTALL)


def page_examples(path: Path) -> dict[str | None, str]:
    """The Python code blocks of a page by the name of the marker above each (``None``: a
    block without one)."""
    return {name or None: code for name, code in _BLOCK.findall(path.read_text())}


def run_example(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """Run the page's code block exactly as a reader copies it."""
    monkeypatch.chdir(tmp_path)  # examples that write do so under results/
    script = tmp_path / f"{name}.py"
    script.write_text(page_examples(DOCS / EXAMPLES[name])[name])
    return runpy.run_path(str(script), run_name="__main__")


def test_every_code_block_of_the_docs_is_a_tested_example() -> None:
    """What a reader copies from a page (here, or on a forge that does not expand includes)
    is the code the tests run: no page includes code from elsewhere."""
    shown = {}
    for page in [*DOCS.glob("*.md"), README]:
        assert '--8<-- "docs/' not in page.read_text(), f"{page.name} includes code"
        for name in page_examples(page):
            assert name is not None or page == README, f"{page.name}: a block without a marker"
            if name is not None:
                shown[name] = page.name
    assert shown == EXAMPLES


def test_quickstart_reaches_the_stackelberg_duopoly_and_is_the_readme_snippet(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_page_in_order(DOCS / "index.md", capsys)
    game = namespace["game"]
    assert float(game.leader.value.detach()) == pytest.approx(4.5, rel=1e-3)
    assert float(game.follower.value.detach()) == pytest.approx(2.25, rel=1e-3)
    assert page_examples(README)[None] == page_examples(DOCS / "index.md")["quickstart"]


_OUTPUT = re.compile(r"<!-- output: (\w+) -->\n```text\n(.*?)```", re.DOTALL)


_NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")


def assert_same_output(printed: str, shown: str, tolerance: float, where: str) -> None:
    """``printed`` is ``shown``: the same text, integers included, and each decimal number
    within ``tolerance`` of the one shown (0: exactly the same digits)."""
    if tolerance == 0:
        assert printed == shown, where
        return
    assert _NUMBER.split(printed) == _NUMBER.split(shown), where
    for got, expected in zip(_NUMBER.findall(printed), _NUMBER.findall(shown), strict=True):
        assert abs(float(got) - float(expected)) <= tolerance, f"{where}: {got} vs {expected}"


def run_page_in_order(
    page: Path, capsys: pytest.CaptureFixture[str], tolerance: float = 0.0
) -> dict:
    """Run each block of ``page`` in order in one namespace, as a reader's session would,
    and check that it prints the output the page shows under it (decimal numbers within
    ``tolerance``: results of training that the number of CPU threads moves in the last
    digit)."""
    shown = dict(_OUTPUT.findall(page.read_text()))
    namespace: dict = {"__name__": "__main__"}
    for name, code in page_examples(page).items():
        exec(compile(code, f"{page.name}:{name}", "exec"), namespace)
        printed = capsys.readouterr().out
        assert_same_output(printed, shown.get(name, ""), tolerance, name)
    assert set(shown) <= set(page_examples(page))
    return namespace


def test_the_tutorial_runs_in_order_and_prints_what_it_shows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_page_in_order(DOCS / "tutorial.md", capsys)
    game = namespace["game"]
    assert float(game.leader.value.detach()) == pytest.approx(4.5, rel=1e-3)
    assert float(game.follower.value.detach()) == pytest.approx(2.25, rel=1e-3)


@pytest.mark.slow
def test_the_solver_tutorial_runs_in_order_and_prints_what_it_shows(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every solver on hyper-cleaning, twice (about 40 s): the table each block prints."""
    monkeypatch.chdir(tmp_path)
    namespace = run_page_in_order(DOCS / "choose-a-solver.md", capsys, tolerance=0.01)
    assert set(namespace["calls_per_step"]) == set(namespace["SOLVERS"])


def test_the_solver_of_your_own_reaches_the_closed_form_and_registers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from stackelberg.solvers import SOLVERS

    monkeypatch.chdir(tmp_path)
    registered = dict(SOLVERS)
    try:
        namespace = run_page_in_order(DOCS / "howto-solver.md", capsys)
    finally:  # the page registers its solver: leave the registry as the other tests know it
        SOLVERS.clear()
        SOLVERS.update(registered)
    assert len(namespace["history"]) == 500
    assert type(namespace["solver"]).__name__ == "DenseImplicit"  # built by make


def test_the_resume_recipe_continues_a_run_exactly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = run_page_in_order(DOCS / "howto-resume.md", capsys)
    assert namespace["gap"] == 0.0 and (tmp_path / "checkpoint.pt").is_file()


def test_the_gpu_recipe_runs_where_torch_can(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On the CPU here; on a GPU machine, on the GPU (``benchmarks/gpu_check.sh``)."""
    namespace = run_example("gpu_solve", monkeypatch, tmp_path)
    device = namespace["device"]
    assert all(p.device.type == device.type for p in namespace["game"].parameters())
    assert namespace["history"].evaluations[-1]["test_accuracy"] > 0.5


def test_solvers_snippet_reaches_the_closed_form_and_saves_its_state(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    namespace = run_example("make_and_resume", monkeypatch, tmp_path)
    game = namespace["game"]
    expected = game.solution().leader
    assert float((game.leader.value.detach() - expected).abs().max()) < 1e-3
    assert namespace["state"]["solver"] == "TotalGradient" and namespace["state"]["v"] is not None


@pytest.mark.slow
def test_unlearnable_snippet_trains_poisons_and_exports(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    namespace = run_example("train_and_export", monkeypatch, tmp_path)
    assert namespace["training"].epoch == 2
    assert (tmp_path / "results" / "my-run" / "checkpoint.pt").is_file()
    exported = np.load(tmp_path / "results" / "my-run" / "poisoned.npz")
    clean = namespace["data"]["train"].images.permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(exported["x"].astype(int) - clean).max() <= 8


@pytest.mark.slow
def test_comparison_suite_snippet_crafts_em_and_trains_a_defended_victim(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    namespace = run_example("comparison_suite", monkeypatch, tmp_path)
    assert namespace["poison"].info["converged"]
    assert 0.0 <= namespace["result"].final <= 1.0


def test_readme_is_short_and_links_only_inside_the_repository() -> None:
    text = README.read_text()
    assert len(text) <= 15_000
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if target.startswith(("http://", "https://", "#")):
            continue
        assert not target.startswith(".."), target
        assert (ROOT / target.split("#")[0]).exists(), f"README links to a missing {target}"
    pages = " ".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert "../shared/DESIGN.md" not in text + pages


def test_hyper_cleaning_snippet_cleans_far_better_than_chance(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    history = run_example("hyper_cleaning", monkeypatch, tmp_path)["history"]
    first, last = history.evaluations[0], history.evaluations[-1]
    assert [row["step"] for row in history.evaluations] == [0, 10, 20, 30, 40]
    assert last["test_accuracy"] > first["test_accuracy"] + 0.5
    assert last["precision"] > 0.8  # keeping samples at random: 0.55


def test_every_results_figure_is_shown_on_a_page() -> None:
    """Each PNG under docs/results is displayed (``![caption](path)``) by some page."""
    shown = set()
    for page in [*DOCS.rglob("*.md"), README]:
        for target in re.findall(r"!\[[^\]]+\]\(([^)\s]+)\)", page.read_text()):
            shown.add((page.parent / target.split("#")[0]).resolve())
    figures = {p.resolve() for p in (DOCS / "results").rglob("*.png")}
    assert sorted(str(p.relative_to(DOCS)) for p in figures - shown) == []


_COMMAND = re.compile(r"<!-- command: (\w+) -->\n```bash\n(.*?)```", re.DOTALL)


def test_outputs_are_compared_digit_for_digit_or_within_the_tolerance() -> None:
    assert_same_output("acc 0.876 F1 480\n", "acc 0.878 F1 480\n", 0.01, "close")
    for printed, tolerance in [("acc 0.856 F1 480\n", 0.01), ("acc 0.878 F1 481\n", 0.01),
                               ("acc 0.876 F1 480\n", 0.0)]:  # fmt: skip
        with pytest.raises(AssertionError):
            assert_same_output(printed, "acc 0.878 F1 480\n", tolerance, "far")


def test_every_shell_block_of_the_tutorials_is_a_tested_command() -> None:
    """The protection tutorial's shell blocks are all marked, so the test below runs them."""
    text = (DOCS / "protect-images.md").read_text()
    assert text.count("```bash") == len(_COMMAND.findall(text)) == 4


@pytest.mark.slow
def test_the_protection_tutorial_runs_every_command_as_written(tmp_path: Path) -> None:
    """Each command of docs/protect-images.md, verbatim and in order, from a working folder
    whose ``../shared/data/mnist-png.tar.gz`` is a small stand-in for MNIST (60 images a
    class): every one succeeds and leaves what the page says it leaves."""
    data = fake_mnist(tmp_path / "source", per_class=60)
    archive = tmp_path / "shared" / "data" / "mnist-png.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(data, arcname="mnist-png")
    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, commands in _COMMAND.findall((DOCS / "protect-images.md").read_text()):
        result = subprocess.run(
            ["bash", "-e", "-c", commands],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT,
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    for path in ("runs/demo/generator.pt", "runs/demo/protected.npz",
                 "runs/demo/clean-victim.json", "runs/demo/protected-victim.json",
                 "my-images-protected/protect_manifest.json"):  # fmt: skip
        assert (work / path).is_file(), path
    assert len(list((work / "my-images-protected").glob("*.png"))) == 60


def test_the_site_fetches_nothing_from_a_third_party_and_has_an_address() -> None:
    """No web fonts from Google; a site_url (from SITE_URL) so sitemap.xml lists pages."""
    config = (ROOT / "mkdocs.yml").read_text()
    assert re.search(r"^  font: false", config, re.MULTILINE)
    assert re.search(r"^site_url: !ENV \[SITE_URL, \"http", config, re.MULTILINE)
