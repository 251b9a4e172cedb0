"""The plots of the models benchmark: throughput and peak memory against resolution, log-log."""

from __future__ import annotations

import math
from pathlib import Path

from visionssm.bench.isolated import FAILED


def _side(row) -> float:
    return math.sqrt(row["pixels"])


def plot(rows, out: Path, title: str, x=_side, tick: str = "resolution",
         xlabel: str = "resolution (side of a square of the same area, pixels)",
         ylabel: str = "images / s") -> list[Path]:
    """throughput.png and memory.png: log-log, one line per series (throughput at the median of the
    timing rounds, a bar over their interquartile range), failures marked at the axis edge.

    ``x(row)``: a row's place on the x axis, ``tick``: the key of its label there; ``xlabel`` and
    ``ylabel`` (of the throughput plot): the axes' titles."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.transforms as mtransforms
    except ImportError:
        print("matplotlib is not installed (pip install 'visionssm[plot]'): no plots written")
        return []
    series = list(dict.fromkeys(r["series"] for r in rows))
    ticks = sorted({(x(r), r[tick]) for r in rows})
    written = []
    for key, ytitle, fname, edge in (("images_per_s", ylabel, "throughput.png", 0.03),
                                     ("peak_mb", "peak memory of the step (MB)", "memory.png", 0.97)):
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
        marked = False
        for i, s in enumerate(series):
            pts = sorted((r for r in rows if r["series"] == s), key=x)
            ok = [(x(r), r[key]) for r in pts if r["status"] == "ok" and r.get(key)]
            bad = [(x(r), r["status"]) for r in pts if r["status"] in FAILED]
            color = f"C{i % 10}"
            style = "-" if pts[0]["kind"] == "ssm" else ("--" if pts[0]["kind"] == "attention" else ":")
            if ok:
                ax.plot(*zip(*ok), style, marker="o", color=color, label=s)
            if key == "images_per_s":  # the interquartile range of the timing rounds
                for r in pts:
                    if r["status"] == "ok" and r.get("latency_q1_ms") and r.get("latency_q3_ms"):
                        ax.vlines(x(r), 1e3 * r["batch_size"] / r["latency_q3_ms"],
                                  1e3 * r["batch_size"] / r["latency_q1_ms"], color=color, alpha=0.6)
            trans = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
            for at, status in bad:
                ax.plot([at], [edge], marker="x", markersize=10, mew=2, color=color, transform=trans, clip_on=False)
                ax.annotate(status, (at, edge), xycoords=trans, textcoords="offset points", fontsize=7,
                            xytext=(4, 4 if edge < 0.5 else -10), color=color)
                marked = True
            if not ok and not bad:
                ax.plot([], [], style, color=color, label=f"{s} (no result)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ytitle)
        ax.set_title(title, fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, title="x: out of memory / time" if marked else None, title_fontsize=7)
        fig.tight_layout()
        fig.savefig(out / fname)
        plt.close(fig)
        written.append(out / fname)
    return written
