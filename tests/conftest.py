import os

# UI tests run without a display; set before any Qt import.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import torch  # noqa: E402

# Two cores here; keep test timings stable and leave room for the rest of the machine.
torch.set_num_threads(min(2, torch.get_num_threads()))
