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


@pytest.fixture
def fixed_batch_losses():
    """``fixed_batch_losses(task, batch, steps, lr)``: the losses of AdamW steps on one batch (a task's
    loss must be one its model can lower)."""
    import torch

    def run(task, batch, steps=8, lr=2e-3):
        """Losses of `steps` AdamW steps on one batch: the task's loss must be one the model can lower."""
        torch.manual_seed(0)
        opt = torch.optim.AdamW(task.model.parameters(), lr=lr)
        task.model.train()
        losses = []
        for _ in range(steps):
            loss, n = task.loss(task.model, batch, torch.device("cpu"))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert n == len(batch[0])
        return losses

    return run
