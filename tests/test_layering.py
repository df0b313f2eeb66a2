"""The package layering: import-linter's contracts (pyproject.toml), and what loads without torch.

Each check runs in a fresh interpreter: this test process has imported torch long before (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_import_contracts_hold():
    """Engine without Qt/UI/CLI/training, the UI through `studio.engine` only, no import cycles (function-level
    imports included): the contracts in pyproject.toml's [tool.importlinter]."""
    result = run_python("""
        import sys
        from importlinter.cli import lint_imports_command
        sys.exit(lint_imports_command())
    """, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_building_the_cli_parser_imports_no_torch():
    result = run_python("""
        import sys
        from studio.cli import build_parser
        build_parser()
        loaded = sorted(m for m in ("torch", "PySide6", "safetensors") if m in sys.modules)
        assert not loaded, loaded
    """)
    assert result.returncode == 0, result.stderr


def test_studio_help_answers_without_torch():
    result = subprocess.run([sys.executable, "-m", "studio", "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "generate" in result.stdout and "train" in result.stdout
    result = run_python("""
        import sys
        from studio.__main__ import main
        try:
            main(["train", "--help"])
        except SystemExit as exit:
            assert exit.code == 0, exit.code
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr


def test_engine_api_loads_without_torch():
    result = run_python("""
        import sys
        import studio.engine.api, studio.engine.errors, studio.engine.masks, studio.engine.request
        assert "torch" not in sys.modules
    """)
    assert result.returncode == 0, result.stderr
