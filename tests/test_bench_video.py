"""visionssm bench video (video models vs frames): a run on tiny models writes the outputs with their
columns, `bench --video` is the same target, out-of-memory cases (estimated before running, or
caught in their process) are recorded and skip the longer clips instead of stopping the run, bad
flags are one-line errors; the joint space-time ViT's two attention modes agree, and torchvision's
video models take any clip length."""

import csv

import pytest
import torch

import visionssm  # noqa: F401  (registers the models)
from visionssm.bench import models as bench_models
from visionssm.bench import video as bench_video
from visionssm.bench.models import run_case
from visionssm.bench.video_case import create_video_model, explicit_attention_mb, has_attention_modes, video_kind
from visionssm.cli import main

TINY_VM = "videomamba_tiny_f8_224:depth=2:embed_dim=32:num_classes=10"
TINY_JOINT = "joint_vit_tiny:depth=2:embed_dim=32:num_heads=2:num_classes=10"
SERIES = [TINY_VM, f"{TINY_JOINT} (sdpa)", f"{TINY_JOINT} (explicit)"]


def test_bench_video_end_to_end_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "video"
    # `bench --video` as the issue spells it is `bench video`
    assert main(["bench", "--video", "--models", TINY_VM, TINY_JOINT, "--frames", "2", "1", "--size", "32",
                 "--threads", "1", "--rounds", "2", "--budget", "0", "--memory-runs", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert list(rows[0])[:len(bench_video.CSV_FIRST)] == bench_video.CSV_FIRST
    assert [(r["series"], r["frames"]) for r in rows] == [(s, f) for s in SERIES for f in ("1", "2")]
    assert all(r["status"] == "ok" for r in rows), [(r["series"], r["note"]) for r in rows]
    assert {r["kind"] for r in rows} == {"ssm", "attention"} and {r["resolution"] for r in rows} == {"32"}
    for r in rows:
        assert r["rounds"] == "2" and len(r["round_ms"].split()) == 2 and r["threads"] == "1"
        assert float(r["latency_q1_ms"]) <= float(r["latency_ms"]) <= float(r["latency_q3_ms"])
        assert float(r["clips_per_s"]) == pytest.approx(1e3 / float(r["latency_ms"]))
        assert float(r["peak_mb"]) >= 0 and float(r["gmacs"]) > 0 and float(r["params_m"]) > 0
        assert float(r["peak_min_mb"]) <= float(r["peak_mb"]) <= float(r["peak_max_mb"])  # two memory runs
    # MACs per clip grow with the frames
    assert float(rows[1]["gmacs"]) > float(rows[0]["gmacs"])
    ratios = list(csv.DictReader(open(out / "ratios.csv")))
    assert list(ratios[0])[:len(bench_video.RATIO_FIRST)] == bench_video.RATIO_FIRST
    assert {(r["ssm"], r["peer"], r["frames"]) for r in ratios} == {(TINY_VM, s, f) for s in SERIES[1:]
                                                                    for f in ("1", "2")}
    md = (out / "results.md").read_text()
    assert "| model | kind | frames | status | latency ms |" in md and "clips/s" in md and "GMACs/clip" in md
    assert f"| {TINY_VM} vs {TINY_JOINT} (explicit) | " in md and "smallest number of frames" in md
    assert (out / "machine.txt").read_text().strip()
    printed = capsys.readouterr().out
    assert f"{TINY_VM} vs {TINY_JOINT} (sdpa) [attention] -> speed:" in printed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in printed
    else:
        assert (out / "throughput.png").stat().st_size > 0 and (out / "memory.png").stat().st_size > 0


def test_out_of_memory_is_recorded_and_skips_the_longer_clips(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run_case(spec, time_limit_s, memory_runs=1):  # VideoMamba runs out of memory from 4 frames
        calls.append((spec["model"], spec["attention"], spec["frames"]))
        if spec["model"] == TINY_VM and spec["frames"] >= 4:
            return dict(status="oom", note="MemoryError: simulated")
        return dict(status="ok", peak_mb=float(spec["frames"]), weights_mb=1.0, gmacs=1.0, params_m=1.0)

    class Timer:
        failed, pid, row = False, None, {}

        def __init__(self, spec, time_limit_s, release=False):
            self.spec = spec

        def time(self, calls=1):
            return [1e-3 * self.spec["frames"]] * calls

        def close(self):
            pass

    monkeypatch.setattr(bench_models, "run_case", fake_run_case)
    monkeypatch.setattr(bench_models, "open_case", Timer)
    # the explicit attention of 4 frames (17 tokens, 3 heads) needs 2*3*17^2*4 B = 6.8 kB: over the budget
    budget = 5e-3
    assert explicit_attention_mb("joint_vit_tiny", 2, (32, 32)) < budget < explicit_attention_mb("joint_vit_tiny", 4,
                                                                                                 (32, 32))
    out = tmp_path / "v"
    assert main(["bench", "video", "--models", TINY_VM, "joint_vit_tiny", "--frames", "2", "4", "8", "--size", "32",
                 "--memory-limit", str(budget), "--out", str(out)]) == 0
    assert (TINY_VM, "-", 8) not in calls  # skipped after running out at 4
    assert ("joint_vit_tiny", "explicit", 4) not in calls and ("joint_vit_tiny", "explicit", 8) not in calls
    rows = {(r["series"], r["frames"]): r for r in csv.DictReader(open(out / "results.csv"))}
    assert [rows[(TINY_VM, f)]["status"] for f in ("2", "4", "8")] == ["ok", "oom", "oom"]
    assert rows[(TINY_VM, "8")]["note"] == "not run: oom at 4 frames"
    explicit = [rows[("joint_vit_tiny (explicit)", f)] for f in ("2", "4", "8")]
    assert [r["status"] for r in explicit] == ["ok", "oom", "oom"]
    assert explicit[1]["note"].startswith("not run: its attention matrices alone need")
    assert rows[("joint_vit_tiny (sdpa)", "8")]["status"] == "ok"
    assert "| oom |" in (out / "results.md").read_text()
    # the SSM ran out where sdpa attention ran: a loss from 4 frames; explicit ran out too at 4 frames
    printed = capsys.readouterr().out
    assert f"{TINY_VM} vs joint_vit_tiny (sdpa) [attention] -> speed: not up to 8" in printed


def test_a_video_case_that_runs_out_of_memory_in_its_process_is_recorded():
    # 16 frames of 224: 3137 tokens, so one (2 heads x tokens x tokens) matrix takes 79 MB, over 20 MB
    spec = dict(case="visionssm.bench.video_case", model=TINY_JOINT, attention="explicit", frames=16, height=224,
                width=224, batch_size=1, device="cpu", threads=1, memory_limit_mb=20)
    row = run_case(spec, time_limit_s=120)
    assert row["status"] == "oom" and "can't allocate memory" in row["note"], row
    assert row["params_m"] > 0  # what was known before it ran out is kept


@pytest.mark.parametrize("argv, expected", [
    (["--frames", "0"], "--frames: expected counts >= 1, got 0"),
    (["--frames", "x"], "--frames: invalid int value"),
    (["--size", "12x"], "--size: expected a size such as 512 or HxW"),
    (["--threads", "0"], "--threads: expected >= 1, got 0"),
    (["--memory-runs", "0"], "--memory-runs: expected >= 1, got 0"),
    (["--memory-limit", "-1"], "--memory-limit: expected a positive number"),
    (["--models", "no_such_model"], "--models: unknown model(s) ['no_such_model']"),
    (["--device", "tpu"], "--device: expected cpu or cuda, got 'tpu'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_are_one_line_errors(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "video", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("visionssm bench video: error: ") and expected in err


def test_the_video_alias_and_target_reach_the_video_benchmark(monkeypatch):
    got = []
    monkeypatch.setattr(bench_video, "main", lambda argv: got.append(argv) or 0)
    assert main(["bench", "--video"]) == 0
    assert main(["bench", "--frames", "8", "--video", "--threads", "1"]) == 0
    assert main(["bench", "video", "--frames", "8"]) == 0
    assert got == [[], ["--frames", "8", "--threads", "1"], ["--frames", "8"]]


def test_the_joint_vit_attends_over_all_frames_in_both_modes():
    sdpa = create_video_model(TINY_JOINT, 3, (32, 32), "sdpa").eval()
    explicit = create_video_model(TINY_JOINT, 3, (32, 32), "explicit").eval()
    explicit.load_state_dict(sdpa.state_dict())
    assert all(m.fused_attn for m in sdpa.modules() if hasattr(m, "fused_attn"))
    assert not any(m.fused_attn for m in explicit.modules() if hasattr(m, "fused_attn"))
    x = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        y = sdpa(x)
        torch.testing.assert_close(y, explicit(x), rtol=1e-4, atol=1e-5)
        x[:, :, 2] += 1  # the class token sees the last frame: joint attention, not per frame
        assert not torch.allclose(sdpa(x), y)
    assert explicit_attention_mb("joint_vit_tiny", 64, (224, 224)) == 2 * 3 * (1 + 64 * 196) ** 2 * 4 / 2**20
    assert explicit_attention_mb(TINY_VM, 64, (224, 224)) is None
    assert video_kind(TINY_JOINT) == "attention" and has_attention_modes(TINY_JOINT)
    assert video_kind(TINY_VM) == "ssm" and not has_attention_modes(TINY_VM)
    assert video_kind("r2plus1d_18") == "other" and video_kind("mvit_v2_s") == "attention"


@pytest.mark.parametrize("name, frames, size", [("mvit_v2_s", 6, 48), ("mvit_v2_s", 32, 224), ("swin3d_t", 3, 32),
                                                ("r2plus1d_18", 2, 32)])
def test_torchvision_video_models_take_any_clip_length(name, frames, size):
    # shapes only (meta tensors): torchvision builds MViT for 16 frames of 224 and fails on others
    with torch.device("meta"):
        net = create_video_model(name, frames, (size, size)).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 3, frames, size, size)).shape == (1, 400)
    assert net.in_chans == 3


def test_defaults_name_known_models():
    from visionssm.bench.video_case import is_known

    assert all(is_known(m) for m in bench_video.DEFAULT_MODELS)
    assert bench_video.DEFAULT_FRAMES == [8, 16, 32, 64, 128]
