"""``visionssm plot RUN_DIR``: the training curves of a run folder (its metrics.jsonl) in one PNG.

One panel for the training and validation losses, one for the task's scores (top-1/top-5,
mIoU/aAcc/mAcc, box/mask AP, and the EMA's score when the run kept one), over epochs.
"""

from __future__ import annotations

import argparse
import os

from visionssm.engine.checkpoints import read_metrics

NOT_SCORES = ("epoch", "step", "lr", "train_loss", "val_loss", "epoch_time_s", "train_img_per_s")


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Draw the curves of ``run_dir`` to ``out`` (default ``RUN_DIR/curves.png``); return the path."""
    if not os.path.isdir(run_dir):
        raise ValueError(f"RUN_DIR: expected a run folder of 'visionssm train', got {run_dir!r} (not a folder)")
    rows = read_metrics(run_dir)
    if not rows:
        raise ValueError(f"RUN_DIR: {run_dir!r} holds no metrics.jsonl rows (has a run written an epoch there?)")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("visionssm plot needs matplotlib; pip install 'visionssm[plot]'") from None
    epochs = [r["epoch"] for r in rows]
    scores = [k for k in rows[-1] if k not in NOT_SCORES and isinstance(rows[-1][k], (int, float))
              and not k.endswith(("APs", "APm", "APl"))]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in ("train_loss", "val_loss"):
        if any(r.get(key) is not None for r in rows):
            left.plot(epochs, [r.get(key) for r in rows], marker="o", label=key.replace("_", " "))
    left.set(xlabel="epoch", ylabel="loss", title="loss")
    for key in scores:
        right.plot(epochs, [r.get(key) for r in rows], marker="o", label=key)
    right.set(xlabel="epoch", ylabel="%", title="validation")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="visionssm plot", description="Training curves of a run folder, as a PNG.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of 'visionssm train' (holds metrics.jsonl)")
    p.add_argument("--out", default=None, help="the PNG to write (default: RUN_DIR/curves.png)")
    args = p.parse_args(argv)
    print(f"wrote {plot_run(args.run_dir, args.out)}")
    return 0
