"""STYLE.md layering: services must not pull torch in at import time."""

import subprocess
import sys


def test_importing_services_does_not_import_torch():
    code = (
        "import sys, services.cli, services.runtime.consumer, services.analysis.router,"
        " services.runtime.supervisor;"
        "heavy = [m for m in ('torch', 'skimage') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_linter_contracts_hold():
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint)], capture_output=True, text=True, cwd=Path(__file__).parents[1]
    )
    assert result.returncode == 0, result.stdout
    assert "KEPT" in result.stdout and "BROKEN" not in result.stdout
