"""The crossover of the models benchmark: from which resolution an SSM model beats a peer.

Speed is judged by same-round ratios (:mod:`visionssm.bench.rounds`): the SSM's time over the peer's
in each round, where both ran in the same rounds; the SSM wins where the interquartile range of
those ratios lies below 1, loses where it lies above, and the size is 'undecided' where it covers 1.
Rows without per-round times (``round_ms``) are compared by images/s. Memory is judged by the peaks,
or, where both rows have the range of several memory runs (``peak_min_mb``-``peak_max_mb``), by the
ranges: 'undecided' where they overlap.

The sizes are the rows' ``resolution``, in the order of their ``pixels``; a benchmark whose sizes
are something else (the video benchmark's frames) names its keys with ``size`` and ``order``.
"""

from __future__ import annotations

import math

from visionssm.bench.isolated import FAILED
from visionssm.bench.rounds import quartiles, same_round_ratios, speed_verdict

METRICS = ("speed", "memory", "both")


def speed_ratios(a: dict, b: dict) -> list[float]:
    """Case a's time over case b's in each round (both rows ok and timed in the same rounds), else []."""
    if a.get("status") != "ok" or b.get("status") != "ok" or not a.get("round_ms") or not b.get("round_ms"):
        return []
    return same_round_ratios(a["round_ms"], b["round_ms"])


def memory_verdict(a: dict, b: dict) -> str:
    """'win', 'loss' or 'undecided' of row ``a``'s peak memory against row ``b``'s: where both rows
    have the range of several memory runs, undecided where the ranges overlap; else by the peaks."""
    if a.get("peak_min_mb") is not None and b.get("peak_min_mb") is not None:
        if a["peak_max_mb"] < b["peak_min_mb"]:
            return "win"
        return "loss" if a["peak_min_mb"] > b["peak_max_mb"] else "undecided"
    return "win" if _num(a.get("peak_mb")) < _num(b.get("peak_mb")) else "loss"


def outcome(a: dict, b: dict, metric: str) -> str | None:
    """'win', 'loss' or 'undecided' of the SSM row ``a`` against the peer row ``b`` of one
    resolution in ``metric`` ('speed', 'memory' or 'both'); None when neither ran. The peer failing
    (out of memory or time) where the SSM ran counts as a win; the SSM failing where the peer ran
    as a loss."""
    a_ok, b_ok = a["status"] == "ok", b["status"] == "ok"
    if not a_ok and not b_ok:
        return None
    if a_ok and not b_ok:
        return "win" if b["status"] in FAILED else "loss"
    if not a_ok:
        return "loss"
    ratios = speed_ratios(a, b)
    if ratios:
        speed = {"faster": "win", "slower": "loss", "undecided": "undecided"}[speed_verdict(ratios)]
    else:
        speed = "win" if a["images_per_s"] > b["images_per_s"] else "loss"
    memory = memory_verdict(a, b)
    if metric != "both":
        return {"speed": speed, "memory": memory}[metric]
    return "loss" if "loss" in (speed, memory) else "win" if speed == memory == "win" else "undecided"


def outcomes(rows: list[dict], ssm: str, peer: str, metric: str, size: str = "resolution",
             order: str = "pixels") -> list[tuple[str, str]]:
    """(resolution, outcome) of ``ssm`` against ``peer``, smallest resolution first, where either ran."""
    by = {}
    for r in rows:
        by.setdefault(r[size], {})[r["series"]] = r
    sizes = sorted(by, key=lambda k: by[k][next(iter(by[k]))][order])
    got = []
    for res in sizes:
        a, b = by[res].get(ssm), by[res].get(peer)
        if a is not None and b is not None and (o := outcome(a, b, metric)) is not None:
            got.append((res, o))
    return got


def crossover(rows: list[dict], ssm: str, peer: str, metric: str, undecided_wins: bool = False,
              size: str = "resolution", order: str = "pixels") -> str | None:
    """The smallest resolution from which ``ssm`` beats ``peer`` at it and every larger one
    (``undecided_wins``: counting the undecided sizes as wins); None when it does not win at the
    largest resolution."""
    first = None
    for res, o in reversed(outcomes(rows, ssm, peer, metric, size, order)):
        if not (o == "win" or (undecided_wins and o == "undecided")):
            break
        first = res
    return first


def _num(v):
    return float("inf") if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _pairs(rows: list[dict]):
    series = list(dict.fromkeys(r["series"] for r in rows))
    kinds = {r["series"]: r["kind"] for r in rows}
    peers = [s for s in series if kinds[s] != "ssm"]
    peers.sort(key=lambda s: kinds[s] != "attention")  # attention first
    return [(a, b, kinds[b]) for a in series if kinds[a] == "ssm" for b in peers]


def crossover_text(rows: list[dict], ssm: str, peer: str, metric: str, largest: str, size: str = "resolution",
                   order: str = "pixels") -> str:
    """'speed: from 512', 'speed: not up to 1248', or, where undecided sizes leave it open,
    'speed: undecided at 512, 1024 (from 512 or from 1248)'."""
    decided = crossover(rows, ssm, peer, metric, size=size, order=order)
    hopeful = crossover(rows, ssm, peer, metric, undecided_wins=True, size=size, order=order)
    strict = f"from {decided}" if decided else f"not up to {largest}"
    if hopeful == decided:
        return f"{metric}: {strict}"
    got = outcomes(rows, ssm, peer, metric, size, order)
    sizes = [res for res, _ in got]
    start = sizes.index(hopeful)
    stop = sizes.index(decided) if decided else len(sizes)
    open_at = [str(res) for res, o in got[start:stop] if o == "undecided"]
    return f"{metric}: undecided at {', '.join(open_at)} (from {hopeful} or {strict})"


def crossover_lines(rows: list[dict], size: str = "resolution", order: str = "pixels") -> list[str]:
    """One line per (SSM, peer): its speed, memory and both crossovers."""
    largest = max(rows, key=lambda r: r[order])[size] if rows else "-"
    return [f"{a} vs {b} [{kind}] -> " + ", ".join(crossover_text(rows, a, b, m, largest, size, order)
                                                   for m in METRICS)
            for a, b, kind in _pairs(rows)]


def ratio_rows(rows: list[dict], size: str = "resolution", order: str = "pixels") -> list[dict]:
    """Per (SSM, peer, resolution) timed in the same rounds: the median of the same-round ratios
    (SSM time / peer time), their interquartile range, and the verdict."""
    by = {(r["series"], r[size]): r for r in rows}
    sizes = sorted({(r[order], r[size]) for r in rows})
    out = []
    for a, b, kind in _pairs(rows):
        for pixels, res in sizes:
            ratios = speed_ratios(by.get((a, res), {}), by.get((b, res), {}))
            if ratios:
                q1, med, q3 = quartiles(ratios)
                out.append({"ssm": a, "peer": b, "peer_kind": kind, size: res, order: pixels, "rounds": len(ratios),
                            "ratio": med, "ratio_q1": q1, "ratio_q3": q3, "speed": speed_verdict(ratios)})
    return out


def ratio_table(ratios: list[dict], size: str = "resolution", order: str = "pixels") -> list[str]:
    """Markdown: one line per (SSM, peer), one column per resolution: 'median (q1-q3)' of the
    same-round ratios, and 'undecided' where the range covers 1."""
    if not ratios:
        return []
    sizes = [res for _, res in sorted({(r[order], r[size]) for r in ratios})]
    pairs = list(dict.fromkeys((r["ssm"], r["peer"]) for r in ratios))
    cell = {(r["ssm"], r["peer"], r[size]): r for r in ratios}
    lines = ["| SSM vs peer | " + " | ".join(map(str, sizes)) + " |", "|" + "---|" * (len(sizes) + 1)]
    for a, b in pairs:
        cells = []
        for res in sizes:
            r = cell.get((a, b, res))
            cells.append("-" if r is None else f"{r['ratio']:.3g} ({r['ratio_q1']:.3g}-{r['ratio_q3']:.3g})"
                         + (" undecided" if r["speed"] == "undecided" else ""))
        lines.append(f"| {a} vs {b} | " + " | ".join(cells) + " |")
    return lines
