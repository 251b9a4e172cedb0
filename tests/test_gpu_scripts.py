"""The GPU check's scripts (tools/gpu_check.sh and its Python parts) in their CPU dry runs: the result
files a lent GPU machine must produce in one run keep their exact columns, and a failing measurement is
recorded without stopping the run. tools/ is not a package: the scripts run as child processes or are
loaded from their path."""

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from visionssm.bench import scan_gpu
from visionssm.bench.machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
# passive OpenMP workers: torch's and numba's runtimes spinning against each other slow a 2-core machine
CHILD_ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="passive")


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tools_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(args, tmp_path, **env):
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=dict(CHILD_ENV, **env), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, f"{args} exited {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        header = next(csv.reader(f))
        f.seek(0)
        return header, list(csv.DictReader(f))


def test_scan_benchmark_dry_run(tmp_path):
    """Under the interpreter every Triton kernel pair is measured beside the torch backend, in both dtypes,
    and agrees with the float64 reference."""
    from visionssm.ops import scan_triton

    out = run_child(["-m", "visionssm", "bench", "scan-gpu", "--dry-run", "--out", str(tmp_path)], tmp_path,
                    TRITON_INTERPRET="1")
    header, rows = read_csv(tmp_path / "scan.csv")
    assert header == ["device", "case", "dtype", "impl", "forward_ms", "fwd_bwd_ms", "max_rel_err"]
    assert {r["case"] for r in rows} == {"2x4x19x4", "1x8x40x1g4"}
    assert {r["device"] for r in rows} == {cpu_model()}
    impls = [f"triton-{k}" for k in scan_triton.KERNELS] + ["torch"]
    assert sorted((r["case"], r["dtype"], r["impl"]) for r in rows) == sorted(
        (c, d, i) for c in ("2x4x19x4", "1x8x40x1g4") for d in ("float32", "bfloat16") for i in impls)
    for r in rows:
        assert float(r["forward_ms"]) > 0 and float(r["fwd_bwd_ms"]) > 0, r
        assert float(r["max_rel_err"]) < (1e-5 if r["dtype"] == "float32" else 2e-2), r
    assert "mamba_ssm: left out" in out
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["dry_run"] and len(report["rows"]) == len(rows)
    assert all(r["floor_ms"] > 0 and r["updates_per_s"] > 0 for r in report["rows"])
    assert "| 1x8x40x1g4 | bfloat16 | torch |" in (tmp_path / "results.md").read_text()


def test_scan_benchmark_records_a_failing_impl_and_goes_on():
    case = scan_gpu.DRY_CASES["tiny-g4"]
    rows = scan_gpu.measure(case, torch.float32, ["no-such-backend", "torch"], torch.device("cpu"),
                            lambda impl: scan_gpu.timing_of(impl, 0, True, "cpu"))
    assert [r["impl"] for r in rows] == ["no-such-backend", "torch"]
    assert "ValueError" in rows[0]["error"] and rows[0].get("forward_ms") is None
    assert rows[1].get("error") is None and rows[1]["forward_ms"] > 0 and rows[1]["max_rel_err"] < 1e-5
    assert case.name == "1x8x40x1g4" and scan_gpu.CASES["vmamba512"].name == "8x384x16384x1g4"
    assert scan_gpu.CASES["vim224"].name == "128x384x197x16"


def test_models_dry_run(tmp_path):
    run_child([str(TOOLS / "gpu_models.py"), "--dry-run", "--out", str(tmp_path)], tmp_path)
    header, rows = read_csv(tmp_path / "models.csv")
    assert header == ["device", "model", "resolution", "batch", "dtype", "mode", "images_per_s", "peak_mib"]
    assert {r["mode"] for r in rows} == {"infer", "train"} and {r["dtype"] for r in rows} == {"float32", "bfloat16"}
    assert {r["model"] for r in rows} == {"vim_tiny_patch16_224", "vmamba_tiny_s1l8", "convnext_tiny",
                                          "deit_tiny_patch16_224 (sdpa)", "deit_tiny_patch16_224 (explicit)"}
    phases = {(r["model"], r["dtype"], r["mode"]) for r in rows if r["resolution"] == "32" and r["batch"] == "2"}
    assert len(phases) == 16  # a.: four models x {bf16, fp32} x {infer, train}
    assert all(float(r["images_per_s"]) > 0 and r["peak_mib"] == "" for r in rows)
    # b. (Vim-T and DeiT-T explicit) and c. (Vim-T and DeiT-T sdpa) at the dry run's high resolution
    assert {r["model"] for r in rows if r["resolution"] == "64"} == {
        "vim_tiny_patch16_224", "deit_tiny_patch16_224 (explicit)", "deit_tiny_patch16_224 (sdpa)"}
    report = json.loads((tmp_path / "gpu_models.json").read_text())
    train = [c for c in report["checks"] if c["check"] == "bf16 training steps"]
    assert len(train) == 2 and all(c["finite"] for c in train)
    assert [line[:2] for line in report["targets"]] == ["a.", "a.", "a.", "b.", "b.", "c."]
    assert not report["skipped"]


def test_models_record_failures_and_stop_at_the_deadline(tmp_path):
    gm = load_tool("gpu_models")
    run = gm.Run(tmp_path, gm.DRY, torch.device("cpu"), deadline_s=600, dry_run=True)
    rows = run.measure("deit_tiny_patch16_224", 32, 2, gm.PHASES[:2])
    rows += run.measure("no_such_model", 32, 2, gm.PHASES[:2])
    assert [r["error"] is None for r in rows] == [True, True, False, False]
    _, written = read_csv(tmp_path / "models.csv")
    assert [r["images_per_s"] == "" for r in written] == [False, False, True, True]

    assert gm.main(["--dry-run", "--deadline", "0", "--out", str(tmp_path / "late")]) == 0
    header, written = read_csv(tmp_path / "late" / "models.csv")
    assert header == list(gm.COLUMNS) and written == []
    assert json.loads((tmp_path / "late" / "gpu_models.json").read_text())["skipped"]


def test_crossover_is_where_vim_stays_faster():
    gm = load_tool("gpu_models")
    deit = {224: 2.0, 512: 2.0, 1024: 2.0}
    assert gm.crossover({224: 1.0, 512: 3.0, 1024: 4.0}, deit) == 512
    assert gm.crossover({224: 3.0, 512: 1.0, 1024: 4.0}, deit) == 1024
    assert gm.crossover({224: 3.0, 512: 3.0, 1024: 1.0}, deit) is None
    assert gm.crossover({224: 1.0, 512: 3.0, 1024: None}, deit) == 512  # a failed size does not count


def test_directions_script_says_why_it_cannot_run_without_triton(capsys, tmp_path):
    from visionssm.ops.selective_scan import backend_unavailable_reason

    reason = backend_unavailable_reason("triton", torch.device("cpu"))
    if reason is None:  # this process runs under the interpreter
        return
    assert load_tool("gpu_directions").main(["--dry-run", "--out", str(tmp_path)]) == 1
    assert reason in capsys.readouterr().err


def test_gpu_check_fits_its_time_and_parses():
    script = (TOOLS / "gpu_check.sh").read_text()
    limits = [int(s) for s in re.findall(r'section "[^"]*" (\d+)', script)]
    assert len(limits) == 8 and sum(limits) <= 470, limits
    assert subprocess.run(["bash", "-n", str(TOOLS / "gpu_check.sh")]).returncode == 0
    for tool in re.findall(r"tools/(\w+\.py)", script):
        assert (TOOLS / tool).exists(), tool


def test_profile_dry_run(tmp_path):
    out = run_child([str(TOOLS / "gpu_profile.py"), "--dry-run", "--out", str(tmp_path), "--models",
                     "vim_tiny_patch16_224", "--batches", "1", "2", "--dtypes", "float32", "bfloat16"], tmp_path)
    header, rows = read_csv(tmp_path / "latency.csv")
    assert header == ["device", "model", "resolution", "batch", "dtype", "mode", "ms", "images_per_s"]
    # batch 1 at both sizes, --batches' others at the first; each dtype; eager only off CUDA
    assert sorted((r["resolution"], r["batch"], r["dtype"]) for r in rows) == sorted(
        (res, b, d) for res, b in (("32", "1"), ("32", "2"), ("64", "1")) for d in ("float32", "bfloat16"))
    assert all(r["mode"] == "eager" and float(r["images_per_s"]) > 0 for r in rows)
    profile = (tmp_path / "profile.txt").read_text()
    assert profile.count("== vim_tiny_patch16_224") == 2 and "step wall" in profile and "error" not in out


def test_profile_without_cuda_says_so(tmp_path):
    res = subprocess.run([sys.executable, str(TOOLS / "gpu_profile.py"), "--out", str(tmp_path)], cwd=ROOT,
                         env=dict(CHILD_ENV, CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True, timeout=300)
    assert res.returncode == 1 and "no CUDA device" in res.stderr and "Traceback" not in res.stderr
