"""The command line answers ``--help`` and usage errors without importing torch, and the
names it offers are the registries' own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stackelberg.unlearnable import choices

COMMANDS = ([], ["train"], ["poison"], ["evaluate"], ["protect"], ["inspect"])


def _modules_after(code: str) -> set[str]:
    script = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    return set(result.stderr.splitlines()[-1].split())  # the help text is on stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "stackelberg")
def test_help_never_imports_torch(command: list[str]) -> None:
    code = (
        "from stackelberg.unlearnable.cli import main\n"
        f"try:\n    main({[*command, '--help']!r})\nexcept SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code"
    )
    loaded = _modules_after(code)
    assert "stackelberg.unlearnable.cli" in loaded
    assert "torch" not in loaded and "numpy" not in loaded


def test_a_usage_error_never_imports_torch() -> None:
    code = (
        "from stackelberg.unlearnable.cli import main\n"
        "try:\n    main(['train', 'run', '--preset', 'nope'])\nexcept SystemExit as exit:\n"
        "    assert exit.code == 2, exit.code"
    )
    loaded = _modules_after(code)
    assert "stackelberg.unlearnable.cli" in loaded and "torch" not in loaded


def test_import_stackelberg_is_light_and_names_load_on_use() -> None:
    loaded = _modules_after("import stackelberg")
    assert "stackelberg" in loaded and "torch" not in loaded
    loaded = _modules_after(
        "import stackelberg.solve, stackelberg as sg\nassert callable(sg.solve), sg.solve"
    )
    assert "torch" in loaded  # and sg.solve stayed the function, not its module


def test_the_offered_names_are_the_registries() -> None:
    from stackelberg.data import DATASETS
    from stackelberg.solvers import SOLVERS
    from stackelberg.unlearnable.architectures import CLASSIFIERS
    from stackelberg.unlearnable.defenses import DEFENSES
    from stackelberg.unlearnable.game import VARIANTS
    from stackelberg.unlearnable.presets import PRESETS

    assert tuple(sorted(SOLVERS)) == choices.SOLVERS
    assert choices.VARIANTS == VARIANTS
    assert tuple(sorted(DEFENSES)) == choices.DEFENSES
    assert tuple(sorted(PRESETS)) == choices.PRESETS
    assert choices.CLASSIFIERS == CLASSIFIERS
    assert choices.DATASETS == DATASETS
