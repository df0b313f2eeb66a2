"""The app and CLI make OpenMP wait passively (studio/__main__.py): set before torch loads, a user's choice kept."""

from __future__ import annotations

import os
import subprocess
import sys

PROBE = "import os, studio.__main__, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"


def probe(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True,
                            check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return result.stdout.strip()


def test_entry_point_sets_passive_waiting_before_torch_loads():
    assert probe() == "PASSIVE None"


def test_a_users_own_openmp_setting_wins():
    assert probe(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert probe(GOMP_SPINCOUNT="100000") == "None 100000"
