"""Autosave keeps a session that holds only what was typed (#17 item 6): settings count as content; and the app's
mask limits are the engine's (the CLI refuses what the app's controls cannot reach)."""

from __future__ import annotations

import pytest

from studio.ui.autosave import Autosave
from studio.ui.settings_model import DEFAULTS, LIMITS


def _killed_session(folder, settings):
    """A session written, then the app killed: no orderly close, the lock left to go stale."""
    first = Autosave(folder)
    first.start()
    first.save_state(settings=settings, image=None, mask=None, result=None, run_ids=[], selected=None)
    first.close()


@pytest.mark.parametrize("changes", [{"prompt": "a lighthouse at dusk"}, {"negative_prompt": "blurry"},
                                     {"sampler": "euler_a", "steps": 40}, {"seed": 1234}])
def test_a_session_with_only_settings_is_offered_and_kept(tmp_path, changes):
    _killed_session(tmp_path, {**DEFAULTS, "recent_models": [], **changes})
    second = Autosave(tmp_path)
    session = second.start()
    assert session is not None, "the typed settings were not offered"
    assert all(session.settings[k] == v for k, v in changes.items())
    assert (tmp_path / "previous" / "session.json").exists()  # not wiped before the user answers
    second.close()


def test_an_untouched_session_is_not_offered(tmp_path):
    """What the app fills in by itself (size and CFG from the model) is not the user's work."""
    _killed_session(tmp_path, {**DEFAULTS, "recent_models": ["tiny-random"], "width": 64, "height": 64, "cfg": 3.0,
                               "model": "tiny-random"})
    second = Autosave(tmp_path)
    assert second.start() is None
    second.close()


def test_the_apps_mask_limits_are_the_engines():
    from studio.engine.limits import MAX_FEATHER, MAX_GROW

    assert LIMITS["grow"].hi == MAX_GROW and LIMITS["feather"].hi == MAX_FEATHER
