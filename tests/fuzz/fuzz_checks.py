"""What every fuzz property asserts, and the hypothesis settings they share (see conftest.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

from hypothesis import HealthCheck, settings

from fuzz_worker import PEAK_RSS_LIMIT, Outcome

DEEP = "deep"
settings.register_profile(DEEP, max_examples=600, deadline=None, derandomize=False, database=None,
                          suppress_health_check=list(HealthCheck))


def fuzz_settings(examples: int) -> settings:
    """`examples` fixed examples in CI; the deep profile's count (×1 of its max_examples) of fresh ones."""
    deep = settings.get_current_profile_name() == DEEP
    return settings(max_examples=settings.get_profile(DEEP).max_examples if deep else examples,
                    derandomize=not deep, deadline=None, database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large, HealthCheck.filter_too_much])


def fresh(folder: Path) -> Path:
    """An empty case folder (hypothesis runs many examples in one test call: tmp_path is the same for all)."""
    case = folder / "case"
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    return case


def assert_clean(outcome: Outcome, case: str, *, may_succeed: bool = True, memory_message_ok: bool = False) -> None:
    """The promise of #17: success, or exit code 1 with one line `studio: error: …` on stderr; never a traceback,
    an internal error, a hang, a crash or a memory blow-up."""
    assert outcome.code is not None, f"{case}: {outcome.died}"
    assert outcome.peak_rss <= PEAK_RSS_LIMIT, f"{case}: peak RSS {outcome.peak_rss / 2**20:.0f} MiB"
    assert "Traceback" not in outcome.stderr and "UNCAUGHT" not in outcome.stderr, f"{case}:\n{outcome.stderr}"
    if outcome.code == 0:
        assert may_succeed, f"{case}: succeeded but should have been refused"
        return
    lines = outcome.lines
    assert outcome.code == 1, f"{case}: exit code {outcome.code}\n{outcome.stderr}"
    assert len(lines) == 1 and lines[0].startswith("studio: error: "), f"{case}: stderr was\n{outcome.stderr}"
    assert "internal error" not in lines[0], f"{case}: {lines[0]}"
    if not memory_message_ok:  # a small hostile file must be refused before any large allocation is tried
        assert "memory" not in lines[0].lower(), f"{case}: {lines[0]}"


def no_leftovers(folder: Path) -> list[str]:
    """Temporary files a write left behind (files.atomic_write's `.NAME.PID.RANDOM.partial`)."""
    return [p.name for p in folder.rglob("*") if p.name.endswith(".partial")]
