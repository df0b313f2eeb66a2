"""A child process that runs the studio CLI (and the engine's readers) on hostile input, under a memory limit.

The fuzz tests generate inputs in the pytest process and send each case to this child as one JSON line; the child
answers with one JSON line: the exit code, what was printed on stderr, its peak resident memory and the time the
case took. The child runs with RLIMIT_AS (address space) capped, so a blow-up is a refused allocation instead of an
out-of-memory kill of the machine; the parent waits a bounded time for each answer and treats silence as a hang.
One child serves many cases (torch is imported once); if it dies (a signal, the kernel), the parent reports the
case and starts a new one.

Run as a script it is the child: `python tests/fuzz/fuzz_worker.py` reads cases from stdin.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MEMORY_LIMIT = 3 * 2**30  # address space of the child: torch and a tiny model take ~0.7 GiB of it
PEAK_RSS_LIMIT = 1536 * 2**20  # resident memory any case may reach
CASE_TIMEOUT = 60.0  # seconds one case may take before it counts as a hang


@dataclass
class Outcome:
    code: int | None  # exit code; None: the child died or hung
    stderr: str
    peak_rss: int  # bytes
    seconds: float
    died: str = ""  # how the child died, when it did

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


def _limit_memory() -> None:  # preexec_fn: in the child, before it runs anything
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    os.setsid()


class Worker:
    """The parent's handle on one child; `run(case)` → Outcome."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.proc: subprocess.Popen | None = None

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(self.state_dir),
               "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen",
               "PYTHONFAULTHANDLER": "1"}
        return subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=ROOT, env=env, preexec_fn=_limit_memory)

    def run(self, case: dict, timeout: float = CASE_TIMEOUT) -> Outcome:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self._start()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        began = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(case) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._dead(began)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.close()
            return Outcome(None, "", 0, time.monotonic() - began, died=f"no answer within {timeout:.0f} s (a hang)")
        line = self.proc.stdout.readline()
        if not line:
            return self._dead(began)
        answer = json.loads(line)
        return Outcome(answer["code"], answer["stderr"], answer["peak_rss"], answer["seconds"])

    def _dead(self, began: float) -> Outcome:
        code = self.proc.wait() if self.proc is not None else None
        self.proc = None
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with {code}"
        return Outcome(None, "", 0, time.monotonic() - began, died=f"the child {how}")

    def close(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None


# -- the child --------------------------------------------------------------------------------------------------

def _peak_rss() -> int:
    """This process's own high-water mark in bytes. VmHWM belongs to the address space, which execve replaces;
    ru_maxrss survives execve, so it would also count the pytest process this worker was forked from (which
    other tests may have grown past the limit before the fuzz tests run)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # where there is no /proc


def _serve() -> None:
    import torch

    torch.set_num_threads(1)
    from studio import cli

    for line in sys.stdin:
        case = json.loads(line)
        began = time.monotonic()
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                code = cli.main(case["argv"])
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else 2
            except BaseException:  # main() itself must never raise: say so, loudly
                code = 99
                err.write("UNCAUGHT " + traceback.format_exc())
        peak = _peak_rss()
        answer = {"code": code, "stderr": err.getvalue(), "peak_rss": peak, "seconds": time.monotonic() - began}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve()
