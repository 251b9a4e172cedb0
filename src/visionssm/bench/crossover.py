"""The crossover of the models benchmark: from which resolution an SSM model beats a peer."""

from __future__ import annotations

import math

from visionssm.bench.isolated import FAILED


def crossover(rows: list[dict], ssm: str, peer: str, metric: str) -> str | None:
    """The smallest resolution from which ``ssm`` beats ``peer`` at it and every larger one.

    metric 'speed' (more images/s), 'memory' (less peak memory) or 'both'. The peer failing (out of
    memory or time) where the SSM ran counts as a win; the SSM failing where the peer ran as a
    loss. Returns None when the SSM does not win at the largest resolution.
    """
    by = {}
    for r in rows:
        by.setdefault(r["resolution"], {})[r["series"]] = r
    order = sorted(by, key=lambda k: by[k][next(iter(by[k]))]["pixels"])
    wins = []
    for res in order:
        a, b = by[res].get(ssm), by[res].get(peer)
        if a is None or b is None:
            continue
        a_ok, b_ok = a["status"] == "ok", b["status"] == "ok"
        if not a_ok and not b_ok:
            continue
        if a_ok and not b_ok:
            win = b["status"] in FAILED
        elif not a_ok:
            win = False
        else:
            fast = a["images_per_s"] > b["images_per_s"]
            small = _num(a.get("peak_mb")) < _num(b.get("peak_mb"))
            win = {"speed": fast, "memory": small, "both": fast and small}[metric]
        wins.append((res, win))
    first = None
    for res, win in reversed(wins):
        if not win:
            break
        first = res
    return first


def _num(v):
    return float("inf") if v is None or (isinstance(v, float) and math.isnan(v)) else v


def crossover_lines(rows: list[dict]) -> list[str]:
    series = list(dict.fromkeys(r["series"] for r in rows))
    kinds = {r["series"]: r["kind"] for r in rows}
    ssms = [s for s in series if kinds[s] == "ssm"]
    peers = [s for s in series if kinds[s] != "ssm"]
    peers.sort(key=lambda s: kinds[s] != "attention")  # attention first
    largest = max(rows, key=lambda r: r["pixels"])["resolution"] if rows else "-"
    lines = []
    for a in ssms:
        for b in peers:
            got = {m: crossover(rows, a, b, m) for m in ("speed", "memory", "both")}
            text = ", ".join(f"{m}: from {got[m]}" if got[m] else f"{m}: not up to {largest}"
                             for m in ("speed", "memory", "both"))
            lines.append(f"{a} vs {b} [{kinds[b]}] -> {text}")
    return lines
