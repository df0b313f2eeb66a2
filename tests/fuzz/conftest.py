"""The fuzz suite's fixtures: one CLI child per module (fuzz_worker.py) and a scratch folder.

CI runs a small, fixed set of examples (`derandomize=True`: the same examples on every run, so a failure
reproduces); `python -m pytest tests/fuzz --hypothesis-profile=deep` draws fresh ones, many more (the profile is
registered in fuzz_checks.py, imported here so that it exists before pytest reads the option). Memory is bounded by
the child's RLIMIT_AS and checked by its peak RSS; time by a per-case limit that counts as a hang.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fuzz_checks  # noqa: E402,F401  (registers the "deep" profile)
from fuzz_worker import Worker  # noqa: E402


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    child = Worker(tmp_path_factory.mktemp("state"))
    yield child
    child.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for one module's generated files; emptied between examples by `fresh`."""
    return tmp_path_factory.mktemp("fuzz")
