"""How responsive the window stays: the longest gap of a 5 ms heartbeat QTimer on the UI thread while a run
generates on the engine thread, and while the timeline is scrubbed; plus the cost of one scrub step.

    QT_QPA_PLATFORM=offscreen python benchmarks/ui_responsiveness.py --size 128 --steps 20
    QT_QPA_PLATFORM=offscreen python benchmarks/ui_responsiveness.py --size 256 --steps 20 --model tiny-random

Goals: heartbeat gap ≤ 50 ms while generating and while scrubbing; one scrub step (slider move → three views
recomputed from the run's latents and repainted) ≤ 16 ms. tiny-random at 128 px has a 64×64 latent, the size of
Stable Diffusion's at 512 px, so the scrub cost is the one an SD user sees (the UNet is what differs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PySide6.QtCore import QCoreApplication, QSettings, QStandardPaths, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

HEARTBEAT_MS = 5


class Heartbeat:
    """A 5 ms QTimer on the UI thread; a gap much longer than 5 ms is time the UI could not react."""

    def __init__(self) -> None:
        self.timer = QTimer()
        self.timer.setInterval(HEARTBEAT_MS)
        self.timer.timeout.connect(self._beat)
        self.gaps: list[float] = []
        self._last = 0.0

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.append((now - self._last) * 1000)
        self._last = now

    def start(self) -> None:
        self.gaps.clear()
        self._last = time.perf_counter()
        self.timer.start()

    def stop(self) -> list[float]:
        self.timer.stop()
        return list(self.gaps)


def pump(app: QApplication, until, timeout: float) -> None:
    end = time.perf_counter() + timeout
    while not until() and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.001)


def report(name: str, values: list[float], goal: float) -> None:
    if not values:
        print(f"{name:<34} no samples")
        return
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    verdict = "ok" if max(values) <= goal else "OVER"
    print(f"{name:<34} max {max(values):7.1f} ms   p99 {p99:6.1f}   median {statistics.median(values):6.1f}"
          f"   n={len(values):5d}   goal ≤ {goal:g} ms: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scrub-seconds", type=float, default=3.0)
    args = parser.parse_args()

    settings_dir = tempfile.mkdtemp(prefix="studio-bench-")
    QStandardPaths.setTestModeEnabled(True)
    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, settings_dir)
    app = QApplication.instance() or QApplication(sys.argv)
    QCoreApplication.setOrganizationName("StudioBenchmark")

    from studio.ui import MainWindow

    window = MainWindow(autosave_dir=Path(settings_dir) / "autosave", offer_restore=False)
    panel = window.prompt_panel
    panel.set_model(args.model)
    panel.width_spin.setValue(args.size)
    panel.height_spin.setValue(args.size)
    panel.steps.setValue(args.steps)
    panel.prompt.setPlainText("a red circle on a blue background")
    window.resize(1400, 900)
    window.show()
    pump(app, lambda: False, 0.5)
    heartbeat = Heartbeat()

    # Warm-up run: imports, model load and first-call kernels are not what this measures.
    window.generate()
    pump(app, lambda: not window.controller.running, 600)

    steps_seen: list[float] = []
    window.controller.step.connect(lambda _e: steps_seen.append(time.perf_counter()))
    heartbeat.start()
    began = time.perf_counter()
    window.generate()
    pump(app, lambda: not window.controller.running, 600)
    generating = heartbeat.stop()
    elapsed = time.perf_counter() - began
    run = window.history.selected
    if run is None or run.status != "finished":
        print("the run did not finish:", window.message_bar.text())
        return 1

    # Scrubbing, measured two ways: the synchronous cost of one step (slider → views → repaint) …
    timeline = window.timeline
    n = run.recorded
    per_step: list[float] = []
    for _ in range(3):
        for index in list(range(n)) + list(range(n - 1, -1, -1)):
            t0 = time.perf_counter()
            timeline.slider.setValue(index)
            for view in timeline.views.values():
                view.repaint()
            timeline.plot.repaint()
            per_step.append((time.perf_counter() - t0) * 1000)

    # … and the heartbeat while a 60 Hz "drag" moves the slider back and forth through the event loop.
    position = [0, 1]

    def drag() -> None:
        index, direction = position
        if not 0 <= index + direction < n:
            direction = -direction
        position[:] = [index + direction, direction]
        timeline.slider.setValue(position[0])

    scrubber = QTimer()
    scrubber.setInterval(16)
    scrubber.timeout.connect(drag)
    heartbeat.start()
    scrubber.start()
    pump(app, lambda: False, args.scrub_seconds)
    scrubber.stop()
    scrubbing = heartbeat.stop()

    latent = run.step_image(0, "x0").shape
    print(f"model {args.model}, {args.size}×{args.size} px (latent preview {latent[1]}×{latent[0]}), "
          f"{args.steps} steps: {elapsed:.2f} s, {args.steps / elapsed:.2f} it/s")
    report("UI heartbeat gap while generating", generating, 50)
    report("UI heartbeat gap while scrubbing", scrubbing, 50)
    report("one scrub step (3 views + plot)", per_step, 16)
    window.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
