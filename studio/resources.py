"""Where the shipped data (tokenizer vocabulary, embedded weights, icons) lives."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def resources_dir() -> Path:
    """The ``resources/`` folder: the repository's (source checkout, editable install) or the wheel's package data.

    The repository layout is only trusted when ``pyproject.toml`` sits beside it, so that an installed copy never
    picks up some unrelated top-level ``resources/`` folder lying in site-packages.
    """
    repo_root = _PACKAGE_DIR.parent
    candidates = [repo_root / "resources", _PACKAGE_DIR / "_resources"]
    if candidates[0].is_dir() and (repo_root / "pyproject.toml").is_file():
        return candidates[0]
    if candidates[1].is_dir():
        return candidates[1]
    raise FileNotFoundError(
        "Diffusion Studio resources not found; looked in " + " and ".join(str(c) for c in candidates)
    )
