"""The app and CLI set their runtime environment (studio/process_env.py) before torch loads: OpenMP threads spin
briefly on an idle machine and wait passively on a busy one, large allocations ask for huge pages; a user's own
choice is kept."""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

PROBE = "import os, studio.__main__, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "THP_MEM_ALLOC_ENABLE")


def probe(code: str = PROBE, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in OURS}
    result = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True,
                            check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return result.stdout.strip()


def test_entry_point_sets_the_wait_policy_before_torch_loads():
    assert probe() in ("PASSIVE None", "None 10000")  # which one depends on how busy this machine is right now


def test_busy_cpus_get_passive_waiting_and_idle_ones_a_short_spin():
    from studio.process_env import IDLE_SHARE, runtime_defaults

    assert runtime_defaults({}, busy_share=lambda: 0.9)["OMP_WAIT_POLICY"] == "PASSIVE"
    assert runtime_defaults({}, busy_share=lambda: IDLE_SHARE)["OMP_WAIT_POLICY"] == "PASSIVE"
    idle = runtime_defaults({}, busy_share=lambda: 0.05)
    assert idle["GOMP_SPINCOUNT"] == "10000" and "OMP_WAIT_POLICY" not in idle
    assert runtime_defaults({}, busy_share=lambda: None)["OMP_WAIT_POLICY"] == "PASSIVE"  # no /proc/stat
    mine = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert runtime_defaults(mine, busy_share=lambda: 0.05) == {"OMP_WAIT_POLICY": "ACTIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def test_the_busy_share_counts_normal_work_and_not_niced_work():
    """A spinning child at normal priority shows up in the share; the same child at nice 19 does not."""
    import pytest

    from studio.process_env import cpu_busy_share

    if cpu_busy_share() is None:
        pytest.skip("no /proc/stat on this system")  # the policy then falls back to passive (tested above)
    cores = os.cpu_count() or 1
    shares = {}
    for niceness in (0, 19):
        spinners = [subprocess.Popen([sys.executable, "-c", f"import os; os.nice({niceness})\nwhile True: pass"])
                    for _ in range(cores)]
        try:
            import time

            time.sleep(0.3)
            shares[niceness] = cpu_busy_share(0.5)
        finally:
            for spinner in spinners:
                spinner.kill()
                spinner.wait()
    assert shares[0] > 0.6 and shares[19] < shares[0] - 0.4


def test_a_users_own_openmp_setting_wins():
    assert probe(OMP_WAIT_POLICY="ACTIVE") == "ACTIVE None"
    assert probe(GOMP_SPINCOUNT="100000") == "None 100000"


HUGE_PAGE_PROBE = """
import os, studio.__main__, torch
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, touched
address = x.data_ptr()
huge = 0
with open("/proc/self/smaps") as f:
    inside = False
    for line in f:
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(v, 16) for v in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            huge = int(line.split()[1])
print(os.environ.get("THP_MEM_ALLOC_ENABLE"), huge)
"""


def test_large_allocations_ask_for_huge_pages_unless_the_user_says_otherwise():
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    enabled, huge_kib = probe(HUGE_PAGE_PROBE).split()
    assert enabled == "1"
    if setting.exists() and "[madvise]" in setting.read_text():
        # Linux hands out huge pages on request only: torch asked for them (32 of the 64 MiB at least)
        assert int(huge_kib) >= 32 << 10
    assert probe(HUGE_PAGE_PROBE, THP_MEM_ALLOC_ENABLE="0").split()[0] == "0"
