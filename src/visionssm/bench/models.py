"""Models vs resolution: where do vision SSMs beat attention (and where not)?

For every (model, attention mode, resolution) it measures: latency and images/s at a chosen batch,
peak memory of the step (CPU: the growth of the resident set; CUDA: the growth of the peak
allocated memory; measured after a warm-up call, so the weights, the input and, with ``--train``,
the optimizer state are resident before it and not included), GMACs per image counted with
``FlopCounterMode`` (the selective scan by its registered formula, 9BLDN + BDL), and the parameter
count. Inference (no grad) by default; ``--train`` times a training step (forward, backward, AdamW
step).

Size, MACs and peak memory come from a fresh process per case, one case at a time; peak memory from
``--memory-runs`` fresh processes (median and range, since a process's resident-set growth varies
by 5-15% from run to run). Latency comes
from interleaved rounds, so that load on the machine cannot fool it: the cases of one resolution
are each built and warmed up in a process kept alive, then timed in turn, round after round (round
1: case A, case B, ...; round 2: A, B, ...): a busy neighbour slows all the cases of the rounds it
overlaps alike. ``latency ms`` is the median of a case's per-round times, ``q1 ms``-``q3 ms`` their
interquartile range; at least ``--rounds`` rounds, more while the slowest case has run under
``--budget`` seconds (at most 30, or ``--rounds``). Speed crossovers come from same-round ratios (the SSM's time over
the peer's in each round): a size is 'undecided' where the interquartile range of those ratios
covers 1 (the SSM faster in some rounds and slower in others). The run also records how many CPUs
other processes kept busy during each resolution's rounds (``other_cpus``) and warns when the
machine was not quiet: interleaving evens out *when* load strikes, not *how much* each case suffers
from it (with several threads per case, a case whose threads often wait on each other stalls most
when one of them is descheduled).

Attention models (timm modules with a ``fused_attn`` switch: ViT, DeiT, ...) are run twice:
``sdpa``, PyTorch's fused ``scaled_dot_product_attention`` (what a user gets today; memory linear
in the tokens), and ``explicit``, softmax(QK^T)V with the (tokens x tokens) matrix materialised, as
the 2024 papers measured it.

A case never stops the run: out-of-memory, the per-case time limit (on the fresh process, on the
set-up of the kept-alive one, on each of its rounds) and an unsupported size are recorded as such,
and a series skips the resolutions above the one where it ran out of memory or time. The run
writes results.csv, results.md, ratios.csv (the same-round ratios), throughput.png and memory.png
(log-log, one line per model, failures marked) and machine.txt into --out, and prints the
crossover: the smallest resolution from which each SSM model is faster than, and uses less memory
than, each peer.

``--batch-size auto`` holds the pixels per batch at every size on CUDA (128 images at 224x224:
max(1, round(128 * 224*224 / (H*W))) at H x W, a column of the table) and is 1 on a CPU.

    visionssm bench [--models M ...] [--resolutions 224 512 1024x768 ...] [--batch-size 1|auto]
                    [--train] [--device cpu|cuda] [--full] [--rounds 5] [--budget 2]
                    [--out bench-out/models]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from visionssm.bench import report
from visionssm.bench.crossover import crossover_lines, ratio_rows, ratio_table
from visionssm.bench.isolated import FAILED, LiveCall, run_isolated
from visionssm.bench.machine import LoadMeter, available_mb, describe
from visionssm.bench.model_case import model_kind, parse_model
from visionssm.bench.model_plots import plot
from visionssm.bench.rounds import MAX_ROUNDS, latency_fields, run_rounds

# the default run (the README's main job): the Vim paper's comparison (Vim-Ti vs DeiT-Ti in both
# attention modes, up to its 1248 headline) and VMamba-T vs MambaOut-T (the same gated-CNN
# design without the SSM); 24 cases, about 10 minutes on 2 quiet CPU cores
DEFAULT_MODELS = ["vim_tiny_patch16_224", "vmamba_tiny_s1l8", "deit_tiny_patch16_224", "convnext_tiny", "mambaout_tiny"]
DEFAULT_RESOLUTIONS = ["224", "512", "1024", "1248"]
FULL_MODELS = ["vim_tiny_patch16_224", "vim_small_patch16_224", "vmamba_tiny_s1l8", "vmamba_vanilla_tiny",
               "deit_tiny_patch16_224", "deit_small_patch16_224", "resnet50", "convnext_tiny", "mambaout_tiny",
               "efficientvim_m2"]
FULL_RESOLUTIONS = ["224", "512", "640", "738", "1024", "1248", "1536", "2048"]
ATTENTION_MODES = ("sdpa", "explicit")
COLUMNS = [("series", "model"), ("kind", "kind"), ("resolution", "resolution"), ("status", "status"),
           ("latency_ms", "latency ms"), ("latency_q1_ms", "q1 ms"), ("latency_q3_ms", "q3 ms"),
           ("rounds", "rounds"), ("images_per_s", "images/s"), ("peak_mb", "peak MB"),
           ("peak_min_mb", "peak min MB"), ("peak_max_mb", "peak max MB"), ("gmacs", "GMACs/img"),
           ("step_gmacs", "train GMACs/img"), ("params_m", "params M")]
# other processes keeping more CPUs than this busy during a resolution's rounds: not a quiet machine
BUSY_CPUS = 0.25
BUSY_WARNING = ("not a quiet machine: every case's times are inflated, and with several threads per case "
                "unevenly (a case whose threads wait on each other often stalls most when one is descheduled), "
                "so even same-round ratios can be off; rerun on a quiet machine")


def parse_resolution(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '512x768' -> (height 512, width 768)."""
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except ValueError:
        h = w = 0
    if len(parts) > 2 or min(h, w) < 1:
        raise ValueError(f"--resolutions: expected a size such as 512 or HxW such as 512x768, got {text!r}")
    return h, w


# --batch-size auto on CUDA: this many images of AUTO_SIZE x AUTO_SIZE pixels per batch, at every size
AUTO_IMAGES, AUTO_SIZE = 128, 224


def pixel_batch(h: int, w: int, images: int = AUTO_IMAGES, size: int = AUTO_SIZE) -> int:
    """The batch at h x w with as many pixels as ``images`` images of size x size (at least 1)."""
    return max(1, round(images * size * size / (h * w)))


def auto_batch(h: int, w: int, device: str) -> int:
    """``--batch-size auto`` at h x w: :func:`pixel_batch` on CUDA, 1 on a CPU."""
    return pixel_batch(h, w) if torch.device(device).type == "cuda" else 1


def res_name(h: int, w: int) -> str:
    return str(h) if h == w else f"{h}x{w}"


def series_name(model: str, attention: str) -> str:
    return model if attention == "-" else f"{model} ({attention})"


# the module whose measure_case / time_case run a case, unless its spec names another ("case")
CASE_MODULE = "visionssm.bench.model_case"


def _case_args(spec: dict) -> dict:
    return {k: v for k, v in spec.items() if k not in ("memory_limit_mb", "budget_s", "case")}


def run_case(spec: dict, time_limit_s: float, memory_runs: int = 1) -> dict:
    """One case's size, MACs and peak memory (spec: model, attention, height, width, batch_size,
    train, device and memory_limit_mb; ``case``: the module that runs it, if not model_case, with
    the arguments its measure_case takes) in a fresh process; its row.

    With ``memory_runs`` > 1 the peak is measured in that many fresh processes (the others build
    the case as its timing process does, without counting): ``peak_mb`` is their median,
    ``peak_min_mb``-``peak_max_mb`` their range. A process's resident-set growth varies from run to
    run (by 5-15% at the default sweep's sizes: where glibc's allocator happens to put a block), so
    one run cannot decide between two models that close."""
    case = spec.get("case", CASE_MODULE)
    row = run_isolated(f"{case}:measure_case", _case_args(spec), time_limit_s,
                       device=spec["device"], memory_limit_mb=spec.get("memory_limit_mb"))
    row.pop("measured_s", None)  # the rounds time the step
    peaks = [row["peak_mb"]] if row.get("status") == "ok" else []
    for _ in range(memory_runs - 1 if peaks else 0):
        again = run_isolated(f"{case}:time_case", _case_args(spec), time_limit_s,
                             device=spec["device"], memory_limit_mb=spec.get("memory_limit_mb"))
        if again.get("status") != "ok":  # a run that failed where the first did not: the row says so
            row.update(status=again["status"], note=f"memory run {len(peaks) + 1}: {again.get('note', '')}"[:300])
            return row
        peaks.append(again["peak_mb"])
    if len(peaks) > 1:
        row.update(peak_mb=statistics.median(peaks), peak_min_mb=min(peaks), peak_max_mb=max(peaks))
    return row


def open_case(spec: dict, time_limit_s: float, release: bool = False) -> LiveCall:
    """The case ``spec`` built and warmed up in a process kept alive for the timing rounds."""
    return LiveCall(f"{spec.get('case', CASE_MODULE)}:time_case", _case_args(spec), time_limit_s,
                    device=spec["device"], memory_limit_mb=spec.get("memory_limit_mb"), release=release)


def time_in_rounds(rows: list[dict], specs: list[dict], time_limit_s: float, rounds: int, budget_s: float,
                   release: bool = False, on_round=None) -> float | None:
    """Time the cases ``specs`` (of one resolution) in interleaved rounds and add their timing
    columns to ``rows``; a case that fails there gets its status and note. Returns the CPUs other
    processes kept busy during the rounds (None where the system does not say)."""
    timers = []
    try:
        for spec in specs:
            timers.append(open_case(spec, time_limit_s, release))
        meter = LoadMeter([getattr(t, "pid", None) for t in timers])
        seconds = run_rounds(timers, rounds, budget_s, max_rounds=MAX_ROUNDS, on_round=on_round)
        others = meter.others()
        for row, spec, timer, got in zip(rows, specs, timers, seconds):
            if timer.failed:
                row.update(status=timer.row["status"], note=f"timing: {timer.row.get('note', '')}"[:300])
            else:
                row.update(latency_fields(got, spec["batch_size"]), other_cpus=others)
        return others
    finally:
        for timer in timers:
            timer.close()


CSV_FIRST = ["series", "model", "attention", "kind", "resolution", "height", "width", "pixels", "batch_size", "mode",
             "device", "status", "latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_min_ms", "rounds",
             "images_per_s", "peak_mb", "peak_min_mb", "peak_max_mb", "weights_mb", "gmacs", "step_gmacs", "params_m",
             "other_cpus", "wall_s",
             "note", "round_ms"]
RATIO_FIRST = ["ssm", "peer", "peer_kind", "resolution", "pixels", "rounds", "ratio", "ratio_q1", "ratio_q3", "speed"]
LEGEND = ("latency ms: the median of the case's per-round times (the cases of a resolution timed in "
          "interleaved rounds, each in a process kept alive); q1 ms, q3 ms: their interquartile range "
          "(25th and 75th percentiles); images/s at the median. peak MB: memory of one step above what is "
          "resident before it: weights, input and, when training, the optimizer state (CPU: resident-set "
          "growth, a fresh process per case; CUDA: growth of the peak allocated); with several memory runs, "
          "the median of that many fresh processes, peak min/max MB their range. GMACs: per image, "
          "forward, FlopCounterMode (the scan by 9BLDN+BDL); train GMACs: forward+backward.")


def format_row(row: dict, columns=COLUMNS) -> str:
    text = report.format_row(row, [c for c in columns if c[0] != "kind"])
    return text + (f"  ({row['note']})" if row.get("status") != "ok" and row.get("note") else "")


def _table(rows: list[dict], columns=COLUMNS) -> list[str]:
    return report.markdown_table(rows, [(k, t) for k, t in columns if any(r.get(k) is not None for r in rows)])


def write_results(rows, machine: str, settings: str, ratios: list[dict], cross: list[str], out: Path,
                  busy: dict | None = None, columns=COLUMNS, csv_first=CSV_FIRST, ratio_first=RATIO_FIRST,
                  legend: str = LEGEND, axis: str = "resolution", size: str = "resolution",
                  order: str = "pixels") -> None:
    """results.csv, ratios.csv, results.md and machine.txt in ``out``; ``columns`` (the table's),
    ``csv_first`` and ``ratio_first`` (the CSVs' first columns), ``legend`` (what the table's
    columns mean), ``axis`` (what the sizes are, in words), ``size`` and ``order`` (the keys of a
    size's name and order in the ratios) for a benchmark other than this one."""
    out.mkdir(parents=True, exist_ok=True)
    csv_rows = [{**r, "round_ms": " ".join(f"{v:.4g}" for v in r["round_ms"])} if r.get("round_ms") else r
                for r in rows]
    report.write_csv(csv_rows, out / "results.csv", first=csv_first)
    report.write_csv(ratios, out / "ratios.csv", first=ratio_first)
    (out / "machine.txt").write_text(machine + "\n")
    lines = [f"Machine: {machine}", "", settings, "", legend, ""]
    if busy:
        loud = {res: c for res, c in busy.items() if c > BUSY_CPUS}
        lines += ["CPUs other processes kept busy during the rounds: "
                  + ", ".join(f"{c:.2f} at {res}" for res, c in busy.items()) + f" (of {os.cpu_count()})"
                  + (f"; {BUSY_WARNING}" if loud else "") + ".", ""]
    lines += _table(rows, columns)
    lines += ["", "Same-round ratios (SSM time / peer time in each round; median (q1-q3); below 1: the SSM is "
              "faster; 'undecided': the interquartile range covers 1):", ""]
    lines += ratio_table(ratios, size, order)
    lines += ["", f"Crossover (the smallest {axis} from which the SSM model is faster / uses less memory "
              "/ both, at it and every larger one measured; 'undecided at' names the sizes whose same-round "
              "ratios leave it open, and the crossover counting them as wins or not):", ""]
    lines += [f"- {c}" for c in cross]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def print_summary(rows, ratios: list[dict], cross: list[str], busy: dict, wall_s: float, files: list,
                  columns=COLUMNS, axis: str = "resolution", size: str = "resolution", order: str = "pixels") -> None:
    """The table, the same-round ratios, the crossovers, a warning where the machine was busy, and
    what was written (arguments as for :func:`write_results`)."""
    print("\n" + "\n".join(_table(rows, columns)))
    if ratios:
        print("\nSame-round ratios (SSM time / peer time; median (q1-q3); below 1: the SSM is faster):")
        print("\n".join(ratio_table(ratios, size, order)))
    print(f"\nCrossover (smallest {axis} from which the SSM model wins, at it and every larger one):")
    print("\n".join(f"  {c}" for c in cross) or "  (needs at least one SSM model and one other model)")
    loud = [res for res, c in busy.items() if c > BUSY_CPUS]
    if loud:
        print(f"\nOther processes kept the CPUs busy at {', '.join(loud)}: {BUSY_WARNING}.")
    print(f"\n{len(rows)} cases in {wall_s / 60:.1f} min; wrote " + ", ".join(str(f) for f in files))


def _progress(total):
    """A progress bar over ``total`` cases (None without tqdm) and the function that prints beside it."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="case", dynamic_ncols=True), tqdm.write
    except ImportError:
        return None, print


def sweep(sizes: list[str], series: list[str], case_of, time_limit_s: float, rounds: int, budget_s: float,
          memory_limit_mb: float | None, columns=COLUMNS, unit: str = "",
          memory_runs: int = 1) -> tuple[list[dict], dict]:
    """Run every case, size after size: (rows, busy).

    ``sizes``: their names, smallest first; ``series``: their names; ``case_of(series, size)`` ->
    (row, spec): the row's fixed columns and the spec of its case for :func:`run_case` and
    :func:`open_case`, or spec None where it is not to run (the row then has its ``status`` and
    ``note``). Each case runs in a fresh process for its size, MACs and peak memory; the cases of a
    size that ran are then timed in interleaved rounds, each in a process kept alive; a series that
    ran out of memory or time skips the larger sizes. ``busy``: size -> the CPUs other processes
    kept busy during its rounds. ``columns`` and ``unit`` (after a size's name) shape the progress lines.
    ``memory_runs``: fresh processes measuring each case's peak memory (see :func:`run_case`).
    """
    rows, failed_at, busy = [], {}, {}
    bar, write = _progress(len(series) * len(sizes))

    def show(text):
        if bar is not None:
            bar.set_postfix_str(text)

    for res in sizes:
        here = []  # (row, spec) of this size's cases; spec None: not run
        for s in series:
            show(f"{s} @ {res}{unit}: size and memory")
            row, spec = case_of(s, res)
            if s in failed_at:
                status, at = failed_at[s]
                row.update(status=status, note=f"not run: {status} at {at}{unit}")
                spec = None
            elif spec is not None:
                row.update(run_case(spec, time_limit_s, memory_runs))
            rows.append(row)
            here.append((row, spec))
            if bar is not None:
                bar.update(1)
        timed = [(row, spec) for row, spec in here if spec is not None and row["status"] == "ok"]
        # the kept-alive processes hold their weights and what their step left in the allocator: where
        # that would not fit, each gives its free memory back after its turn (its calls then pay the page faults)
        held = sum((row.get("weights_mb") or 0) + (row.get("peak_mb") or 0) for row, _ in timed)
        release = bool(memory_limit_mb) and held > memory_limit_mb
        if release:
            write(f"{res}{unit}: the {len(timed)} cases would hold {held / 1024:.1f} GB between their rounds; "
                  f"each gives its free memory back after its turn")
        if timed:
            label = f"{len(timed)} cases @ {res}{unit}"
            others = time_in_rounds([r for r, _ in timed], [sp for _, sp in timed], time_limit_s, rounds,
                                    budget_s, release=release,
                                    on_round=lambda r, label=label: show(f"{label}: round {r}"))
            if others is not None:
                busy[res] = others
                write(f"{res}{unit}: other processes kept {others:.2f} of {os.cpu_count()} CPUs busy during the "
                      f"rounds" + (f" -- {BUSY_WARNING}" if others > BUSY_CPUS else ""))
        for row, _ in here:
            if release and row.get("rounds"):
                row["note"] = "; ".join(filter(None, [row.get("note"), "free memory given back after each round"]))
            if row["status"] in FAILED and row["series"] not in failed_at:  # ran out, or case_of knew it would
                failed_at[row["series"]] = (row["status"], res)
            write(format_row(row, columns))
    if bar is not None:
        bar.close()
    return rows, busy


def add_sweep_arguments(p: argparse.ArgumentParser, axis: str, rounds: int, time_limit: float | None,
                        time_limit_default: str, memory_limit_help: str, memory_runs: int) -> None:
    """The flags of a :func:`sweep` (``axis``: what one size is, in the help), shared by the benchmarks
    that run one; :func:`check_sweep_arguments` checks them."""
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument("--time-limit", type=float, default=time_limit,
                   help=f"seconds per case: for its fresh process, for the set-up of its kept-alive process and "
                        f"for each of its timing rounds (default: {time_limit_default})")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"the fewest timing rounds of each {axis}'s cases, interleaved (default: %(default)s)")
    p.add_argument("--budget", type=float, default=2.0,
                   help=f"seconds: more rounds while the slowest case of a {axis} has run under this "
                        f"(default: %(default)s; at most {MAX_ROUNDS} rounds, or --rounds if more)")
    p.add_argument("--memory-limit", type=float, help=memory_limit_help)
    p.add_argument("--memory-runs", type=int, default=memory_runs,
                   help="fresh processes measuring each case's peak memory: the median counts, and a memory "
                        "crossover is undecided where the two ranges overlap (default: %(default)s)")


def check_sweep_arguments(p: argparse.ArgumentParser, args: argparse.Namespace,
                          cap_mb: float | None = None) -> tuple[torch.device, float | None]:
    """Check the flags of :func:`add_sweep_arguments` (a bad one: ``p.error``); the device and the
    memory limit (on a CPU by default 90% of the available memory, at most ``cap_mb``)."""
    for flag, value in (("--rounds", args.rounds), ("--memory-runs", args.memory_runs)):
        if value < 1:
            p.error(f"{flag}: expected >= 1, got {value}")
    if args.budget < 0:
        p.error(f"--budget: expected >= 0 seconds, got {args.budget:g}")
    for flag, value in (("--time-limit", args.time_limit), ("--memory-limit", args.memory_limit)):
        if value is not None and value <= 0:
            p.error(f"{flag}: expected a positive number, got {value:g}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        p.error(f"--device: expected cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here")
    memory_limit = args.memory_limit
    if memory_limit is None and device.type == "cpu":
        avail = available_mb()
        memory_limit = min((v for v in (0.9 * avail if avail else None, cap_mb) if v), default=None)
    return device, memory_limit


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--models", nargs="+", metavar="NAME[:key=value...]",
                   help=f"timm model names, optionally with create kwargs such as vim_tiny_patch16_224:depth=12 "
                        f"(default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--resolutions", nargs="+",
                   help=f"sizes N or HxW (default: {' '.join(DEFAULT_RESOLUTIONS)}; "
                        f"--full: {' '.join(FULL_RESOLUTIONS)})")
    p.add_argument("--full", action="store_true",
                   help="the full sweep: all peers, 224..2048 (an hour or more on 2 CPU cores)")
    p.add_argument("--attention", choices=("both", *ATTENTION_MODES), default="both",
                   help="attention modes of attention models (default: %(default)s)")
    p.add_argument("--batch-size", default="1",
                   help=f"images per step, or 'auto': on CUDA {AUTO_IMAGES} images of {AUTO_SIZE}x{AUTO_SIZE} in "
                        f"pixels at every size, on a CPU 1 (default: %(default)s)")
    p.add_argument("--train", action="store_true", help="time a training step (forward+backward+AdamW)")
    add_sweep_arguments(p, "resolution", rounds=5, time_limit=None, time_limit_default="90; --full: 300",
                        memory_limit_help="CPU: MB a case may allocate before it counts as out of memory "
                                          "(default: 90%% of available)", memory_runs=3)
    p.add_argument("--out", default="bench-out/models", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)

    import timm

    import visionssm  # noqa: F401

    models = args.models or (FULL_MODELS if args.full else DEFAULT_MODELS)
    try:
        unknown = [m for m in models if not timm.is_model(parse_model(m)[0])]
    except ValueError as e:
        p.error(str(e))
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; see `timm.list_models()` and `visionssm models`")
    try:
        sizes = [parse_resolution(r) for r in (args.resolutions or
                                                (FULL_RESOLUTIONS if args.full else DEFAULT_RESOLUTIONS))]
    except ValueError as e:
        p.error(str(e))
    sizes = sorted(dict.fromkeys(sizes), key=lambda hw: (hw[0] * hw[1], hw))
    auto = args.batch_size == "auto"
    if not auto and not (args.batch_size.isdecimal() and int(args.batch_size) >= 1):
        p.error(f"--batch-size: expected an integer >= 1 or 'auto', got {args.batch_size!r}")
    device, memory_limit = check_sweep_arguments(p, args)
    batch = args.batch_size if not auto else "auto (1 on a CPU)" if device.type == "cpu" else \
        f"auto ({AUTO_IMAGES} images of {AUTO_SIZE}x{AUTO_SIZE} in pixels, per size)"
    columns = COLUMNS  # with auto, the table shows each row's batch
    if auto:
        at = COLUMNS.index(("resolution", "resolution")) + 1
        columns = [*COLUMNS[:at], ("batch_size", "batch"), *COLUMNS[at:]]
    time_limit = args.time_limit or (300.0 if args.full else 90.0)

    kinds = {m: model_kind(m) for m in models}
    modes = ATTENTION_MODES if args.attention == "both" else (args.attention,)
    series = [(m, attention) for m in models for attention in (modes if kinds[m] == "attention" else ("-",))]

    machine = describe(args.device, cases_isolated=True)
    mode = "training step (fwd+bwd+AdamW)" if args.train else "inference (no grad)"
    settings = (f"{mode}, batch {batch}, float32, device {args.device}, per-case time limit "
                f"{time_limit:g} s" + (f", memory limit {memory_limit / 1024:.1f} GB" if memory_limit else "")
                + f"; timing: at least {args.rounds} interleaved rounds per resolution, more while the slowest "
                  f"case has run under {args.budget:g} s (at most {max(args.rounds, MAX_ROUNDS)}); peak memory: "
                  f"median of {args.memory_runs} fresh process(es)")
    print(f"machine: {machine}\n{settings}\n{len(series) * len(sizes)} cases: size, MACs and peak memory in a "
          f"fresh process each; latency in interleaved rounds, the cases of a resolution kept alive side by side")
    by_series = {series_name(m, attention): (m, attention) for m, attention in series}
    by_size = {res_name(h, w): (h, w) for h, w in sizes}

    def case_of(s, res):
        (m, attention), (h, w) = by_series[s], by_size[res]
        batch_size = auto_batch(h, w, args.device) if auto else int(args.batch_size)
        row = dict(series=s, model=m, attention=attention, kind=kinds[m], resolution=res, height=h, width=w,
                   pixels=h * w, batch_size=batch_size, mode="train" if args.train else "inference",
                   device=args.device)
        spec = dict(model=m, attention=attention, height=h, width=w, batch_size=batch_size,
                    train=args.train, device=args.device, memory_limit_mb=memory_limit)
        return row, spec

    start = time.perf_counter()
    rows, busy = sweep(list(by_size), list(by_series), case_of, time_limit, args.rounds, args.budget, memory_limit,
                       columns, memory_runs=args.memory_runs)
    wall = time.perf_counter() - start
    order = {s: i for i, s in enumerate(by_series)}
    rows.sort(key=lambda r: (order[r["series"]], r["pixels"]))  # one series after another, as the table reads

    ratios = ratio_rows(rows)
    cross = crossover_lines(rows)
    out = Path(args.out)
    write_results(rows, machine, settings, ratios, cross, out, busy, columns)
    plots = plot(rows, out, f"{mode}, batch {batch}, {args.device}\n{machine}")
    print_summary(rows, ratios, cross, busy, wall, [out / "results.csv", out / "results.md", out / "ratios.csv",
                                                    *plots, out / "machine.txt"], columns)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
