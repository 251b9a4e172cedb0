"""Timing in interleaved rounds, so that load on the machine cannot fool a comparison.

The cases of one resolution are timed in turn, round after round (round 1: case A, case B, case
C; round 2: A, B, C; ...), each in its own process kept alive between its turns: a busy neighbour
slows every case of the rounds it overlaps alike, not whole cases. Per case the figures are the
median of its per-round times and their interquartile range (25th to 75th percentile); per pair
of cases, the same-round ratio of their times (which a load spike that lasts a round cancels), its
median and interquartile range, and a verdict that is 'undecided' where that range covers 1.
"""

from __future__ import annotations

# rounds go on past the minimum while the slowest case has run under the budget, up to this many
MAX_ROUNDS = 30


def run_rounds(timers, rounds: int, budget_s: float = 0.0, max_rounds: int = MAX_ROUNDS, calls: int = 1,
               on_round=None) -> list[list[float]]:
    """Time ``timers`` in interleaved rounds: per timer, its seconds in each round it ran (the
    fastest of its ``calls`` calls in the round).

    A timer has ``time(calls)`` -> the seconds of each call, or None once it has failed (it then
    sits out the rounds left). At least ``rounds`` rounds; more while the slowest timer's rounds add
    up to less than ``budget_s``, at most ``max(rounds, max_rounds)``. ``on_round(r)`` is called
    before round r (from 1).
    """
    seconds = [[] for _ in timers]
    failed = set()
    for r in range(1, max(rounds, max_rounds) + 1):
        if r > rounds and max((sum(s) for i, s in enumerate(seconds) if i not in failed), default=budget_s) >= budget_s:
            break
        if len(failed) == len(timers):
            break
        if on_round is not None:
            on_round(r)
        for i, timer in enumerate(timers):
            if i in failed:
                continue
            got = timer.time(calls)
            if got is None:
                failed.add(i)
            else:
                seconds[i].append(min(got))
    return seconds


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values``, interpolated linearly between the sorted values
    (numpy's default)."""
    v = sorted(values)
    if not v:
        return float("nan")
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def quartiles(values) -> tuple[float, float, float]:
    """(25th percentile, median, 75th percentile) of ``values``."""
    return percentile(values, 25), percentile(values, 50), percentile(values, 75)


def latency_fields(round_s: list[float], batch_size: int) -> dict:
    """A case's timing columns from its per-round seconds: latency_ms (the median), latency_q1_ms and
    latency_q3_ms (the interquartile range), latency_min_ms, images_per_s (at the median), rounds and
    round_ms (the per-round times)."""
    q1, med, q3 = quartiles(round_s)
    return dict(latency_ms=1e3 * med, latency_q1_ms=1e3 * q1, latency_q3_ms=1e3 * q3,
                latency_min_ms=1e3 * min(round_s), images_per_s=batch_size / med, rounds=len(round_s),
                round_ms=[1e3 * s for s in round_s])


def same_round_ratios(a_ms: list[float], b_ms: list[float]) -> list[float]:
    """The time of case a over that of case b in each round both ran (a's round i against b's)."""
    return [a / b for a, b in zip(a_ms, b_ms) if b > 0]


def speed_verdict(ratios: list[float]) -> str:
    """'faster' (a's time over b's below 1 across the interquartile range of the same-round ratios),
    'slower' (above 1 across it) or 'undecided' (the range covers 1: a is faster in some rounds and
    slower in others)."""
    q1, _, q3 = quartiles(ratios)
    return "faster" if q3 < 1 else "slower" if q1 > 1 else "undecided"
