import contextlib
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing downloads in tests


class Crash(Exception):
    """Raised by the patched checkpoint writer of ``crash_after``."""


@pytest.fixture
def crash_after(monkeypatch):
    """``with crash_after(n, "last.pth"): run(...)`` stops the run right after the n-th checkpoint write
    (of that file name; of any file when the name is None) and expects it to stop there."""
    from visionssm.engine import checkpoints

    @contextlib.contextmanager
    def armed(call: int, name: str | None = None):
        calls = []
        real = checkpoints.save_checkpoint

        def save(state, path):
            real(state, path)
            if name is None or os.path.basename(path) == name:
                calls.append(path)
                if len(calls) == call:
                    raise Crash(f"stopped after write {call} ({os.path.basename(path)})")

        with monkeypatch.context() as m:
            m.setattr(checkpoints, "save_checkpoint", save)
            with pytest.raises(Crash):
                yield

    return armed
