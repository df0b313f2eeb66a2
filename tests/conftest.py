import os
import tempfile

# UI tests run without a display; set before any Qt import.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# What the engine caches for the next start (hashes, converted models) goes to a fresh folder, never the user's.
os.environ["STUDIO_CACHE_DIR"] = tempfile.mkdtemp(prefix="studio-test-cache-")

import torch  # noqa: E402

# Two cores here; keep test timings stable and leave room for the rest of the machine.
torch.set_num_threads(min(2, torch.get_num_threads()))
