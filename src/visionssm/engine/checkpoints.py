"""The files of a run folder: atomic checkpoints, the metrics log, the summary, and the folder's rules.

A run folder holds ``last.pth`` (all a resume needs), ``best.pth``, ``metrics.jsonl`` / ``metrics.csv``
(a row per epoch), ``args.yaml`` and ``summary.json``. Every file that a kill could tear is written
to a temporary file and renamed; the metrics log is appended, and a torn last line is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import json
import os
import tempfile

import torch

from visionssm.models.checkpoint import CheckpointError, read_checkpoint, state_dict_of

CHECKPOINT_VERSION = 1
# what a run folder holds; a new run refuses a folder that has any of them (without --resume/--overwrite)
RUN_FILES = ("last.pth", "best.pth", "metrics.csv", "metrics.jsonl", "args.yaml", "summary.json")


def save_checkpoint(state: dict, path: str) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, os.replace."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def load_checkpoint(path: str) -> dict:
    """A checkpoint of ``visionssm train`` (a run folder means its last.pth), with clear errors."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pth")
    ckpt = read_checkpoint(path)
    state_dict_of(ckpt, path=path)  # refuses a file without weights
    return ckpt


def load_run_checkpoint(path: str) -> dict:
    """A checkpoint to resume from: written by ``visionssm train``, of this checkpoint version."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt.get("config"), dict) or "epoch" not in ckpt:
        raise CheckpointError(f"--resume {path!r}: not a checkpoint of 'visionssm train' (no run state); "
                              "to start from its weights use --pretrained-path")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"--resume {path!r}: checkpoint version {ckpt.get('version')}, this visionssm "
                              f"reads version {CHECKPOINT_VERSION}")
    return ckpt


def write_json(obj, path: str) -> None:
    """Write JSON atomically (a temporary file, then os.replace)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)



def prepare_run_folder(out: str, args: argparse.Namespace) -> None:
    """Refuse a folder that holds another run (unless resuming it, or --overwrite); tidy a resumed one."""
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(out, f))]
    resuming_here = args.resume is not None and os.path.isdir(out) and os.path.samefile(
        out, args.resume if os.path.isdir(args.resume) else os.path.dirname(os.path.abspath(args.resume)))
    if found and not resuming_here:
        if not args.overwrite:
            raise ValueError(f"--output: {out!r} holds an earlier run ({', '.join(found)}); resume it with "
                             f"--resume {out}, choose another --output, or pass --overwrite to delete it")
        for f in found:
            os.remove(os.path.join(out, f))
    for tmp in glob.glob(os.path.join(glob.escape(out), ".*.tmp")) + glob.glob(os.path.join(glob.escape(out), "*.tmp")):
        with contextlib.suppress(OSError):  # left by a write that was killed
            os.remove(tmp)



def write_metrics(out: str, row: dict, fields: list[str], writer) -> None:
    path = os.path.join(out, "metrics.csv")
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)
    with open(os.path.join(out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")
    if writer is not None:
        for k, v in row.items():
            if k not in ("epoch", "step") and v is not None:
                writer.add_scalar(k, v, row["epoch"])
        writer.flush()


def read_metrics(out: str) -> list[dict]:
    """The rows of metrics.jsonl; a torn last line (a kill while writing) is left out."""
    rows = []
    with contextlib.suppress(FileNotFoundError), open(os.path.join(out, "metrics.jsonl")) as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return [r for r in rows if isinstance(r, dict) and "epoch" in r]


def read_summary(out: str) -> dict | None:
    """summary.json of a finished run, None when there is none."""
    try:
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def run_throughput(rows: list[dict]) -> float:
    """Training images per second over the epochs of ``rows`` (a resumed run's included)."""
    images = sum(r.get("train_img_per_s", 0) * r.get("epoch_time_s", 0) for r in rows)
    return images / max(sum(r.get("epoch_time_s", 0) for r in rows), 1e-9)


def truncate_metrics(out: str, start_epoch: int, fields: list[str]) -> None:
    """On a resume, keep the rows of the epochs before ``start_epoch`` (the others run again), in both files."""
    if not os.path.exists(os.path.join(out, "metrics.jsonl")):
        return
    rows = [r for r in read_metrics(out) if r["epoch"] < start_epoch]
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    with open(os.path.join(out, "metrics.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
