"""Video models vs frames: from how many frames is VideoMamba faster and leaner than its peers?

For every (model, attention mode, number of frames) it measures, on clips of one frame size (224
by default), batch 1, inference: the latency (the median of interleaved timing rounds, and their
interquartile range), clips/s, the peak memory of the step, GMACs per clip and the parameter
count, with the machinery of ``visionssm bench`` (models vs resolution): size, MACs and peak memory
from a fresh process per case; latency from interleaved rounds, the cases of one frame count each
in a process kept alive and timed in turn, so that load on the machine slows them alike; speed
crossovers from same-round ratios, 'undecided' where their interquartile range covers 1.

The models (``--models``): VideoMamba-Ti (``videomamba_tiny_f8_224``, built for each clip length),
a ViT-Ti with joint space-time attention (``joint_vit_tiny``: every token attends to every token of
every frame, the VideoMamba paper's "TimeSformer-Ti") in both attention modes -- ``sdpa``,
PyTorch's fused kernel, memory linear in the tokens, and ``explicit``, the (tokens x tokens) matrix
materialised, as the paper measured it -- and torchvision's ``mvit_v2_s``, ``swin3d_t`` and
``r2plus1d_18`` (random weights). 'NAME:key=value' passes create kwargs (e.g. a smaller model).

A case never stops the run. One whose explicit attention matrices alone would exceed
``--memory-limit`` is not run and is recorded as out of memory; one that runs out of it (CPU: the
process's address space is capped), or of ``--time-limit``, is recorded as such; a series then
skips the larger frame counts. The run writes results.csv, results.md, ratios.csv, throughput.png
and memory.png (log-log against frames) and machine.txt into --out, and prints the crossovers:
the smallest frame count from which VideoMamba is faster than, and uses less memory than, each peer.

    visionssm bench video [--models M ...] [--frames 8 16 32 64 128] [--size 224] [--threads 2]
                          [--memory-limit MB] [--rounds 3] [--budget 2] [--time-limit 300]
                          [--out bench-out/video]
    visionssm bench --video ...   (the same)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from visionssm.bench import models as bench
from visionssm.bench.crossover import crossover_lines, ratio_rows
from visionssm.bench.machine import describe
from visionssm.bench.model_plots import plot
from visionssm.bench.rounds import MAX_ROUNDS
from visionssm.bench.video_case import explicit_attention_mb, has_attention_modes, is_known, video_kind

DEFAULT_MODELS = ["videomamba_tiny_f8_224", "joint_vit_tiny", "mvit_v2_s", "swin3d_t", "r2plus1d_18"]
DEFAULT_FRAMES = [8, 16, 32, 64, 128]
# the default memory budget: 16 GiB (a 24 GiB machine), or 90% of what the system has available if less
MEMORY_BUDGET_MB = 16 * 1024
COLUMNS = [("series", "model"), ("kind", "kind"), ("frames", "frames"), ("status", "status"),
           ("latency_ms", "latency ms"), ("latency_q1_ms", "q1 ms"), ("latency_q3_ms", "q3 ms"),
           ("rounds", "rounds"), ("clips_per_s", "clips/s"), ("peak_mb", "peak MB"),
           ("peak_min_mb", "peak min MB"), ("peak_max_mb", "peak max MB"), ("gmacs", "GMACs/clip"),
           ("params_m", "params M")]
CSV_FIRST = ["series", "model", "attention", "kind", "frames", "resolution", "height", "width", "batch_size",
             "threads", "device", "status", "latency_ms", "latency_q1_ms", "latency_q3_ms", "latency_min_ms",
             "rounds", "clips_per_s", "peak_mb", "peak_min_mb", "peak_max_mb", "weights_mb", "gmacs", "params_m",
             "other_cpus", "wall_s", "note", "round_ms"]
RATIO_FIRST = ["ssm", "peer", "peer_kind", "frames", "rounds", "ratio", "ratio_q1", "ratio_q3", "speed"]
LEGEND = ("latency ms: the median of the case's per-round times (the cases of a frame count timed in "
          "interleaved rounds, each in a process kept alive); q1 ms, q3 ms: their interquartile range "
          "(25th and 75th percentiles); clips/s at the median. peak MB: memory of one forward above what is "
          "resident before it (weights and input; CPU: resident-set growth, a fresh process per case; CUDA: "
          "growth of the peak allocated); with several memory runs (--memory-runs), the median of that many fresh "
          "processes, peak min/max MB their range. GMACs: per clip, FlopCounterMode (the scan by 9BLDN+BDL). "
          "oom: the case ran out of the memory budget, or its explicit attention matrices alone would have.")


def main(argv=None):
    p = argparse.ArgumentParser(prog="visionssm bench video", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    p.add_argument("--models", nargs="+", metavar="NAME[:key=value...]",
                   help=f"video models: this library's, joint_vit_tiny, torchvision's; optionally with create kwargs "
                        f"such as joint_vit_tiny:depth=2 (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--frames", nargs="+", type=int, default=DEFAULT_FRAMES, metavar="N",
                   help="clip lengths (default: %(default)s)")
    p.add_argument("--size", default="224", help="frame size N or HxW (default: %(default)s)")
    p.add_argument("--attention", choices=("both", *bench.ATTENTION_MODES), default="both",
                   help="attention modes of models with timm's attention switch (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=1, help="clips per step (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads per case, torch's and the CPU scan's (default: %(default)s)")
    # one memory run a case by default: at 64-128 frames each fresh process takes minutes
    bench.add_sweep_arguments(p, "frame count", rounds=3, time_limit=300.0, time_limit_default="300",
                              memory_limit_help=f"MB a case may use; above it a case counts as out of memory "
                                                f"(default: {MEMORY_BUDGET_MB}, or 90%% of the available memory "
                                                f"if less)", memory_runs=1)
    p.add_argument("--out", default="bench-out/video", help="output folder (default: %(default)s)")
    args = p.parse_args(argv)

    import visionssm  # noqa: F401

    models = args.models or DEFAULT_MODELS
    try:
        unknown = [m for m in models if not is_known(m)]
    except ValueError as e:
        p.error(str(e))
    if unknown:
        p.error(f"--models: unknown model(s) {unknown}; expected joint_vit_tiny, a torchvision video model or a "
                f"timm video model (see `visionssm models 'videomamba*'`)")
    bad = [f for f in args.frames if f < 1]
    if bad:
        p.error(f"--frames: expected counts >= 1, got {' '.join(map(str, bad))}")
    try:
        h, w = bench.parse_resolution(args.size)
    except ValueError as e:
        p.error(str(e).replace("--resolutions", "--size"))
    for flag, value in (("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value < 1:
            p.error(f"{flag}: expected >= 1, got {value}")
    _, memory_limit = bench.check_sweep_arguments(p, args, cap_mb=MEMORY_BUDGET_MB)

    frames = sorted(set(args.frames))
    res = bench.res_name(h, w)
    kinds = {m: video_kind(m) for m in models}
    modes = bench.ATTENTION_MODES if args.attention == "both" else (args.attention,)
    series = [(m, a) for m in models for a in (modes if has_attention_modes(m) else ("-",))]
    by_series = {bench.series_name(m, a): (m, a) for m, a in series}

    def case_of(s, n):
        (m, attention), t = by_series[s], int(n)
        row = dict(series=s, model=m, attention=attention, kind=kinds[m], frames=t, resolution=res, height=h,
                   width=w, batch_size=args.batch_size, threads=args.threads, device=args.device)
        need = explicit_attention_mb(m, t, (h, w)) if attention == "explicit" else None
        if memory_limit and need and need > memory_limit:
            row.update(status="oom", note=f"not run: its attention matrices alone need {need / 1024:.1f} GB, "
                                          f"over the {memory_limit / 1024:.1f} GB budget")
            return row, None
        return row, dict(case="visionssm.bench.video_case", model=m, attention=attention, frames=t, height=h,
                         width=w, batch_size=args.batch_size, device=args.device, threads=args.threads,
                         memory_limit_mb=memory_limit)

    machine = describe(args.device, cases_isolated=True)
    settings = (f"inference (no grad), batch {args.batch_size}, float32, frames of {res} px, {args.threads} threads "
                f"per case (torch and numba), device {args.device}, per-case time limit {args.time_limit:g} s"
                + (f", memory budget {memory_limit / 1024:.1f} GB" if memory_limit else "")
                + f"; timing: at least {args.rounds} interleaved rounds per frame count, more while the slowest "
                  f"case has run under {args.budget:g} s (at most {max(args.rounds, MAX_ROUNDS)}); peak memory: "
                  f"median of {args.memory_runs} fresh process(es)")
    print(f"machine: {machine}\n{settings}\n{len(series) * len(frames)} cases: size, MACs and peak memory in a "
          f"fresh process each; latency in interleaved rounds, the cases of a frame count kept alive side by side")
    start = time.perf_counter()
    sweep_columns = [("images_per_s" if k == "clips_per_s" else k, t) for k, t in COLUMNS]
    rows, busy = bench.sweep([str(n) for n in frames], list(by_series), case_of, args.time_limit, args.rounds,
                             args.budget, memory_limit, columns=sweep_columns, unit=" frames",
                             memory_runs=args.memory_runs)
    wall = time.perf_counter() - start
    order = {s: i for i, s in enumerate(by_series)}
    rows.sort(key=lambda r: (order[r["series"]], r["frames"]))  # one series after another, as the table reads

    ratios = ratio_rows(rows, size="frames", order="frames")
    cross = crossover_lines(rows, size="frames", order="frames")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"inference, batch {args.batch_size}, {res} px, threads per case {args.threads}, {args.device}\n{machine}"
    plots = plot(rows, out, title, x=lambda r: r["frames"], tick="frames", xlabel="frames per clip",
                 ylabel="clips / s")
    table = [{("clips_per_s" if k == "images_per_s" else k): v for k, v in r.items()} for r in rows]
    bench.write_results(table, machine, settings, ratios, cross, out, busy, columns=COLUMNS, csv_first=CSV_FIRST,
                        ratio_first=RATIO_FIRST, legend=LEGEND, axis="number of frames", size="frames", order="frames")
    bench.print_summary(table, ratios, cross, busy, wall,
                        [out / "results.csv", out / "results.md", out / "ratios.csv", *plots, out / "machine.txt"],
                        columns=COLUMNS, axis="number of frames", size="frames", order="frames")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
