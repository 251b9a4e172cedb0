"""visionssm bench (models vs resolution): end to end on tiny models, FLOP counts against a hand
count, failures recorded instead of raised, the interleaved timing rounds, same-round ratios and
the crossover (with its 'undecided' sizes), and the bench target dispatch; the isolated-process
runner that measures peak memory for the models, scan and dense benchmarks, and its kept-alive
processes that time a case on request."""

import csv
import json
import math

import pytest
import timm
import torch

import visionssm  # noqa: F401  (registers the models)
from visionssm.bench import models as bench_models
from visionssm.bench.crossover import crossover, crossover_lines, ratio_rows
from visionssm.bench.flops import count_macs
from visionssm.bench.isolated import LiveCall, run_isolated
from visionssm.bench.model_case import create_model, model_kind, parse_model
from visionssm.bench.models import parse_resolution, run_case
from visionssm.bench.rounds import quartiles, run_rounds, same_round_ratios, speed_verdict
from visionssm.cli import main
from visionssm.ops.selective_scan import scan_macs

TINY_VIM = "vim_tiny_patch16_224:depth=2:embed_dim=32:num_classes=10"
TINY_DEIT = "deit_tiny_patch16_224:depth=2:embed_dim=32:num_heads=2:num_classes=10"


def _spec(model, h=32, w=32, **kw):
    return {**dict(model=model, attention="-", height=h, width=w, batch_size=1, train=False, device="cpu",
                   budget_s=0.05, memory_limit_mb=None), **kw}


def test_bench_end_to_end_on_tiny_models(tmp_path, capsys):
    out = tmp_path / "models"
    assert main(["bench", "--models", TINY_VIM, TINY_DEIT, "--resolutions", "32", "48x64",
                 "--rounds", "3", "--budget", "0", "--memory-runs", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    cases = {(r["series"], r["resolution"]) for r in rows}
    series = [TINY_VIM, f"{TINY_DEIT} (sdpa)", f"{TINY_DEIT} (explicit)"]
    assert cases == {(s, res) for s in series for res in ("32", "48x64")} and len(rows) == 6
    assert all(r["status"] == "ok" for r in rows), [(r["series"], r["note"]) for r in rows]
    assert all(float(r["images_per_s"]) > 0 and float(r["peak_mb"]) >= 0 and float(r["gmacs"]) > 0 for r in rows)
    # two memory runs a case: the peak is their median (here their mean), within their range
    assert all(float(r["peak_min_mb"]) <= float(r["peak_mb"]) <= float(r["peak_max_mb"]) for r in rows)
    assert {r["kind"] for r in rows} == {"ssm", "attention"}
    for r in rows:  # the median and interquartile range of three interleaved rounds
        assert r["rounds"] == "3" and len(r["round_ms"].split()) == 3
        assert float(r["latency_min_ms"]) <= float(r["latency_q1_ms"]) <= float(r["latency_ms"]) \
            <= float(r["latency_q3_ms"])
        assert float(r["images_per_s"]) == pytest.approx(1e3 / float(r["latency_ms"]))
    ratios = list(csv.DictReader(open(out / "ratios.csv")))
    assert {(r["peer"], r["resolution"]) for r in ratios} == {(s, res) for s in series[1:] for res in ("32", "48x64")}
    assert all(r["ssm"] == TINY_VIM and r["rounds"] == "3" and r["speed"] in ("faster", "slower", "undecided")
               and float(r["ratio_q1"]) <= float(r["ratio"]) <= float(r["ratio_q3"]) for r in ratios)
    md = (out / "results.md").read_text()
    table = [line for line in md.split("Same-round")[0].splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # header + one line per case
    assert f"| {TINY_VIM} vs {TINY_DEIT} (sdpa) | " in md
    assert (out / "machine.txt").read_text().strip()
    printed = capsys.readouterr().out
    assert "Crossover" in printed and f"{TINY_VIM} vs {TINY_DEIT} (explicit) [attention] -> speed:" in printed
    assert "Same-round ratios" in printed
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in printed
    else:
        assert (out / "throughput.png").stat().st_size > 0 and (out / "memory.png").stat().st_size > 0


def test_vim_macs_equal_a_hand_count():
    h, w = 32, 48
    model = create_model(TINY_VIM, (h, w))
    D, E, N, R, P, C = 32, 64, 16, 2, 16, 10  # embed, d_inner, state, dt_rank, patch, classes
    patches = (h // P) * (w // P)
    L = patches + 1  # class token
    conv = sum(L - j for j in range(4)) * 2 * E  # depthwise conv1d, k=4, both directions: tap j reaches L-j steps
    per_block = (L * D * 2 * E  # in_proj
                 + conv
                 + 2 * L * E * (R + 2 * N)  # x_proj, both directions
                 + 2 * L * R * E  # dt_proj, both directions
                 + scan_macs(1, 2 * E, L, N)  # one scan over both directions
                 + L * E * D)  # out_proj
    hand = patches * P * P * 3 * D + 2 * per_block + D * C
    assert count_macs(model, (h, w)) == hand
    by_op = count_macs(model, (h, w), by_op=True)
    assert by_op["visionssm.directional_scan"] == 2 * scan_macs(1, 2 * E, L, N)
    # backward: every matmul/conv twice (input and weight gradients; the patch conv has no input
    # gradient) and the scan twice its forward; the depthwise convs' elementwise backward uncounted
    assert count_macs(model, (h, w), backward=True) == 3 * hand - patches * P * P * 3 * D - 2 * 2 * conv


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_deit_macs_count_the_attention_in_both_modes(attention):
    h, w = 32, 48
    model = create_model(TINY_DEIT, (h, w), attention)
    D, P, C = 32, 16, 10
    patches = (h // P) * (w // P)
    L = patches + 1
    per_block = L * D * 3 * D + 2 * L * L * D + L * D * D + 2 * L * D * 4 * D  # qkv, QK^T and AV, proj, mlp
    assert count_macs(model, (h, w)) == patches * P * P * 3 * D + 2 * per_block + D * C


def test_attention_modes_switch_timm_attention():
    sdpa = create_model(TINY_DEIT, (32, 32), "sdpa")
    explicit = create_model(TINY_DEIT, (32, 32), "explicit")
    assert all(m.fused_attn for m in sdpa.modules() if hasattr(m, "fused_attn"))
    assert not any(m.fused_attn for m in explicit.modules() if hasattr(m, "fused_attn"))
    explicit.load_state_dict(sdpa.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sdpa.eval()(x), explicit.eval()(x), rtol=1e-4, atol=1e-5)
    assert model_kind(TINY_DEIT) == "attention" and model_kind(TINY_VIM) == "ssm"
    assert model_kind("resnet18") == "other"


def test_a_timed_out_case_is_recorded_not_raised():
    row = run_case(_spec(TINY_VIM, budget_s=30.0), time_limit_s=0.01)
    assert row["status"] == "timeout" and "per-case limit" in row["note"]
    # the server survives a killed case: the next case runs
    assert run_case(_spec(TINY_VIM), time_limit_s=60)["status"] == "ok"


def test_an_out_of_memory_case_is_recorded_not_raised():
    row = run_case(_spec("resnet18", 128, 128, memory_limit_mb=1), time_limit_s=60)
    assert row["status"] == "oom", row
    assert row["params_m"] == pytest.approx(11.69, abs=0.01)  # what was known before it ran out is kept


def test_a_case_that_dies_is_recorded_by_how_it_died():
    from visionssm.bench.isolated import capped, died

    assert died(-9, False, "x") == dict(status="oom", note="killed (out of memory)")
    # a segmentation fault under the address-space cap is an allocation that failed unchecked (oneDNN's
    # Conv3d does that); without a cap it stays an error, with the process's last words as the note
    assert died(-11, True, "x")["status"] == "oom" and "memory cap" in died(139, True, "x")["note"]
    assert died(-11, False, "Segmentation fault") == dict(status="error", note="Segmentation fault")
    assert died(1, True, "boom") == dict(status="error", note="boom")
    assert capped(dict(device="cpu", memory_limit_mb=100)) and not capped(dict(device="cpu", memory_limit_mb=None))
    assert not capped(dict(device="cuda:0", memory_limit_mb=100))


def test_an_unsupported_size_or_kwarg_is_recorded_not_raised():
    row = run_case(_spec(TINY_VIM, 8, 8), time_limit_s=60)
    assert row["status"] == "unsupported" and "img_size" in row["note"]
    row = run_case(_spec("resnet18:no_such_kwarg=1"), time_limit_s=60)
    assert row["status"] == "unsupported" and "no_such_kwarg" in row["note"]


class FakeTimer:
    """A kept-alive case that records the order in which it is timed; ``seconds(round)`` its time."""

    def __init__(self, spec, order, seconds, fail_in_round=None):
        self.spec, self.order, self.seconds, self.fail_in_round = spec, order, seconds, fail_in_round
        self.name = (spec["model"], spec["attention"], spec["height"]) if isinstance(spec, dict) else spec
        self.row, self.rounds, self.pid = {}, 0, None

    @property
    def failed(self):
        return "status" in self.row

    def time(self, calls=1):
        self.rounds += 1
        self.order.append(self.name)
        if self.rounds == self.fail_in_round:
            self.row.update(status="timeout", note="simulated")
            return None
        return [self.seconds(self.rounds)] * calls

    def close(self):
        pass


def _fake_cases(monkeypatch, oom=lambda spec: False, seconds=lambda spec, r: 0.01):
    """Fake the fresh-process pass (``run_case``) and the kept-alive timers (``open_case``) of
    ``visionssm bench``; the record of their calls."""
    calls, order = [], []

    def fake_run_case(spec, time_limit_s, memory_runs=1):
        calls.append((spec["model"], spec["attention"], spec["height"]))
        if oom(spec):
            return dict(status="oom", note="simulated")
        return dict(status="ok", peak_mb=spec["height"], weights_mb=1.0, gmacs=1.0, params_m=1.0)

    monkeypatch.setattr(bench_models, "run_case", fake_run_case)
    monkeypatch.setattr(bench_models, "open_case", lambda spec, time_limit_s, release=False: FakeTimer(
        spec, order, lambda r: seconds(spec, r)))
    return calls, order


def test_the_cases_of_a_resolution_are_timed_in_interleaved_rounds(tmp_path, monkeypatch):
    _, order = _fake_cases(monkeypatch)
    assert main(["bench", "--models", TINY_VIM, "resnet18", TINY_DEIT, "--resolutions", "32", "64",
                 "--rounds", "3", "--budget", "0", "--out", str(tmp_path)]) == 0
    cases = [(TINY_VIM, "-"), ("resnet18", "-"), (TINY_DEIT, "sdpa"), (TINY_DEIT, "explicit")]
    # round 1: every case once, in turn; then round 2; ...; then the next resolution
    assert order == [(m, a, h) for h in (32, 64) for _ in range(3) for m, a in cases]
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert all(r["rounds"] == "3" and r["round_ms"] == "10 10 10" for r in rows)


def test_rounds_go_on_while_the_budget_lasts_and_a_failed_case_sits_out():
    order = []
    a = FakeTimer("a", order, lambda r: 0.5)
    b = FakeTimer("b", order, lambda r: 0.1, fail_in_round=2)
    c = FakeTimer("c", order, lambda r: 0.2)
    seconds = run_rounds([a, b, c], rounds=2, budget_s=1.4)
    # at least two rounds; a third since the slowest (a) had run 1.0 s < 1.4 s; then 1.5 s: done
    assert order == ["a", "b", "c", "a", "b", "c", "a", "c"]
    assert seconds == [[0.5] * 3, [0.1], [0.2] * 3] and b.row["status"] == "timeout"
    order.clear()
    assert run_rounds([FakeTimer("d", order, lambda r: 1e-3)], rounds=1, budget_s=10, max_rounds=4) == [[1e-3] * 4]


def test_same_round_ratios_decide_the_speed_or_leave_it_undecided():
    assert same_round_ratios([8, 12, 9], [10, 10, 10]) == pytest.approx([0.8, 1.2, 0.9])
    assert quartiles([0.8, 1.2, 0.9]) == pytest.approx((0.85, 0.9, 1.05))  # linear interpolation
    assert speed_verdict([0.8, 1.2, 0.9]) == "undecided"  # the interquartile range covers 1
    assert speed_verdict([0.5, 0.6, 0.55]) == "faster"
    assert speed_verdict([1.3, 1.1, 1.2]) == "slower"
    assert speed_verdict([0.5, 0.6, 0.55, 0.7, 3.0]) == "faster"  # one spiked round does not decide it

    def row(series, res, ms, kind="ssm", mb=1.0):
        return dict(series=series, resolution=str(res), pixels=res * res, status="ok", kind=kind, peak_mb=mb,
                    latency_ms=sorted(ms)[1], images_per_s=1e3 / sorted(ms)[1], round_ms=ms)

    rows = [row("ssm", 224, [20, 21, 22]), row("cnn", 224, [10, 10, 11], "other", 2),
            # the SSM's median is faster at 512, but in some rounds it is slower: undecided
            row("ssm", 512, [80, 120, 90]), row("cnn", 512, [100, 100, 100], "other", 2),
            row("ssm", 1024, [300, 310, 320]), row("cnn", 1024, [600, 620, 640], "other", 2)]
    assert crossover(rows, "ssm", "cnn", "speed") == "1024"
    assert crossover(rows, "ssm", "cnn", "speed", undecided_wins=True) == "512"
    assert crossover_lines(rows) == ["ssm vs cnn [other] -> speed: undecided at 512 (from 512 or from 1024), "
                                     "memory: from 224, both: undecided at 512 (from 512 or from 1024)"]
    ratios = {r["resolution"]: r for r in ratio_rows(rows)}
    assert ratios["512"]["speed"] == "undecided" and ratios["512"]["ratio"] == pytest.approx(0.9)
    assert ratios["224"]["speed"] == "slower" and ratios["1024"]["speed"] == "faster"
    rows[2]["round_ms"] = [80, 85, 90]  # decided now
    assert crossover_lines(rows)[0] == "ssm vs cnn [other] -> speed: from 512, memory: from 224, both: from 512"


def test_a_kept_alive_case_is_timed_on_request_and_records_its_failures():
    spec = dict(model="resnet18", attention="-", height=32, width=32, batch_size=1, train=False, device="cpu")
    case = LiveCall("visionssm.bench.model_case:time_case", spec, 60)
    try:
        got = [case.time(2) for _ in range(2)]
        assert not case.failed and all(len(s) == 2 and min(s) > 0 for s in got), case.row
        case.time_limit_s = 1e-4  # a round over the limit: the process is ended, the case recorded
        assert case.time() is None and case.row["status"] == "timeout"
    finally:
        case.close()
    bad = LiveCall("visionssm.bench.model_case:time_case", dict(spec, model="resnet18:no_such_kwarg=1"), 60)
    assert bad.failed and bad.row["status"] == "unsupported" and "no_such_kwarg" in bad.row["note"]
    assert bad.time() is None
    bad.close()


def test_failures_skip_the_larger_sizes_and_are_marked(tmp_path, monkeypatch, capsys):
    calls, _ = _fake_cases(monkeypatch, oom=lambda spec: spec["model"] == TINY_DEIT and spec["attention"] == "explicit"
                           and spec["height"] >= 64,
                           seconds=lambda spec, r: 0.01 * spec["height"] / 32 * (1.5 if spec["model"] == TINY_VIM
                                                                                  else 1))
    out = tmp_path / "m"
    assert main(["bench", "--models", TINY_VIM, TINY_DEIT, "--resolutions", "32", "64", "96", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 9
    assert (TINY_DEIT, "explicit", 96) not in calls  # skipped after the out-of-memory at 64
    explicit = [r for r in rows if r["series"] == f"{TINY_DEIT} (explicit)"]
    assert [r["status"] for r in explicit] == ["ok", "oom", "oom"]
    assert explicit[2]["note"] == "not run: oom at 64"
    assert "| oom |" in (out / "results.md").read_text()
    printed = capsys.readouterr().out
    # the SSM ran where the explicit attention ran out of memory: it wins from there
    assert f"{TINY_VIM} vs {TINY_DEIT} (explicit) [attention] -> speed: from 64, memory: from 64, both: from 64" \
        in printed


def _row(series, res, status="ok", ips=None, mb=None, kind="ssm"):
    return dict(series=series, resolution=str(res), pixels=res * res, status=status, images_per_s=ips, peak_mb=mb,
                kind=kind)


def test_crossover_is_the_smallest_size_from_which_the_ssm_wins_throughout():
    rows = [_row("ssm", 224, ips=10, mb=50), _row("att", 224, ips=20, mb=40, kind="attention"),
            _row("ssm", 512, ips=5, mb=60), _row("att", 512, ips=4, mb=80, kind="attention"),
            _row("ssm", 1024, ips=1, mb=200), _row("att", 1024, ips=2, mb=900, kind="attention"),
            _row("ssm", 1248, ips=0.5, mb=300), _row("att", 1248, status="oom", kind="attention")]
    assert crossover(rows, "ssm", "att", "speed") == "1248"  # lost at 1024: the 512 win does not count
    assert crossover(rows, "ssm", "att", "memory") == "512"
    assert crossover(rows, "ssm", "att", "both") == "1248"
    rows[-2]["status"] = "timeout"  # both failed at 1248: that size says nothing
    assert crossover(rows, "ssm", "att", "memory") == "512"
    rows[-1].update(status="ok", images_per_s=0.1, peak_mb=2000)
    assert crossover(rows, "ssm", "att", "memory") is None  # the SSM failed where the peer ran


def test_memory_is_undecided_where_the_ranges_of_the_memory_runs_overlap():
    def row(series, res, lo, hi, kind="ssm"):
        return dict(_row(series, res, ips=1, mb=(lo + hi) / 2, kind=kind), peak_min_mb=lo, peak_max_mb=hi)

    rows = [row("ssm", 224, 30, 40), row("att", 224, 20, 25, "attention"),
            row("ssm", 512, 113, 128), row("att", 512, 122, 123, "attention"),  # overlapping: no verdict
            row("ssm", 1024, 300, 310), row("att", 1024, 400, 420, "attention")]
    assert crossover(rows, "ssm", "att", "memory") == "1024"
    assert crossover(rows, "ssm", "att", "memory", undecided_wins=True) == "512"
    assert "memory: undecided at 512 (from 512 or from 1024)" in crossover_lines(rows)[0]
    # a single run's peaks are compared as they are
    assert crossover([_row("ssm", 512, ips=1, mb=113), _row("att", 512, ips=1, mb=122, kind="attention")],
                     "ssm", "att", "memory") == "512"


def test_batch_size_auto_holds_the_pixels_per_batch_on_cuda_and_is_1_on_a_cpu():
    from visionssm.bench.models import auto_batch, pixel_batch

    # 128 images of 224x224 in pixels; 512: 24.5, rounded half to even; 8192: under one image, still 1
    assert [auto_batch(r, r, "cuda") for r in (224, 448, 512, 1024, 2048, 8192)] == [128, 32, 24, 6, 2, 1]
    assert auto_batch(448, 224, "cuda") == auto_batch(224, 448, "cuda:0") == 64
    assert auto_batch(32, 32, "cuda") == 6272  # smaller than 224: larger batches
    assert [auto_batch(r, r, "cpu") for r in (32, 224, 1024)] == [1, 1, 1]
    assert pixel_batch(64, 64, images=2, size=32) == 1 and pixel_batch(112, 112, images=8, size=224) == 32


def _fake_sweep(monkeypatch, tmp_path, *flags, cuda=False):
    """``visionssm bench`` on fake cases (each round 10 ms) with ``flags``; its CSV rows, results.md and plot title."""
    _fake_cases(monkeypatch)
    titles = []
    monkeypatch.setattr(bench_models, "plot", lambda rows, out, title: titles.append(title) or [])
    if cuda:  # no GPU needed: the cases are fake
        monkeypatch.setattr(bench_models.torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(bench_models, "describe", lambda device, **kw: "a fake GPU")
    assert main(["bench", "--models", TINY_VIM, "resnet18", "--resolutions", "224", "512", "448x224", "1024",
                 "--rounds", "2", "--budget", "0", "--out", str(tmp_path), *flags]) == 0
    return list(csv.DictReader(open(tmp_path / "results.csv"))), (tmp_path / "results.md").read_text(), titles[0]


def test_batch_size_auto_runs_each_size_at_its_own_batch_on_cuda(tmp_path, monkeypatch):
    rows, md, title = _fake_sweep(monkeypatch, tmp_path, "--batch-size", "auto", "--device", "cuda", cuda=True)
    expected = {"224": 128, "448x224": 64, "512": 24, "1024": 6}
    assert len(rows) == 8 and all(int(r["batch_size"]) == expected[r["resolution"]] for r in rows)
    # images/s at the row's own batch: each round took 10 ms
    assert all(float(r["images_per_s"]) == pytest.approx(100 * expected[r["resolution"]]) for r in rows)
    said = "inference (no grad), batch auto (128 images of 224x224 in pixels, per size)"
    assert f"{said}, float32, device cuda" in md and title.startswith(f"{said}, cuda")
    table = [line for line in md.split("Same-round")[0].splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | kind | resolution | batch | status |")
    assert sum(line.startswith(f"| {TINY_VIM} | ssm | 512 | 24 | ok |") for line in table) == 1


def test_batch_size_auto_is_1_on_a_cpu_and_an_integer_the_same_at_every_size(tmp_path, monkeypatch):
    rows, md, title = _fake_sweep(monkeypatch, tmp_path / "auto", "--batch-size", "auto")
    assert all(r["batch_size"] == "1" and float(r["images_per_s"]) == pytest.approx(100) for r in rows)
    assert "batch auto (1 on a CPU)," in md and "batch auto (1 on a CPU)," in title and "| batch |" in md
    rows, md, title = _fake_sweep(monkeypatch, tmp_path / "3", "--batch-size", "3")
    assert all(r["batch_size"] == "3" and float(r["images_per_s"]) == pytest.approx(300) for r in rows)
    assert "batch 3," in md and "batch 3," in title
    rows, md, title = _fake_sweep(monkeypatch, tmp_path / "default")  # as before: one batch, no column for it
    assert all(r["batch_size"] == "1" for r in rows) and "batch 1," in md and "batch 1," in title
    assert "| batch |" not in md and "| model | kind | resolution | status |" in md


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "Auto"])
def test_a_bad_batch_size_is_a_one_line_error(capsys, value):
    with pytest.raises(SystemExit) as e:
        main(["bench", "--models", "resnet18", f"--batch-size={value}"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"visionssm bench: error: --batch-size: expected an integer >= 1 or 'auto', got {value!r}")


def test_parse_resolution_and_model():
    assert parse_resolution("512") == (512, 512) and parse_resolution("512x768") == (512, 768)
    for bad in ("0", "a", "1x2x3", "512x"):
        with pytest.raises(ValueError, match="--resolutions: expected a size such as 512 or HxW"):
            parse_resolution(bad)
    assert parse_model("vmamba_tiny_s1l8:depths=(1,1,2,1):scan_order=cross") == (
        "vmamba_tiny_s1l8", {"depths": (1, 1, 2, 1), "scan_order": "cross"})
    with pytest.raises(ValueError, match="NAME:key=value"):
        parse_model("resnet18:depth")


def test_bench_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--models", "no_such_model"])
    assert "unknown model(s) ['no_such_model']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--resolutions", "12x"])
    assert "--resolutions: expected a size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--memory-runs", "0"])
    assert "--memory-runs: expected >= 1, got 0" in capsys.readouterr().err
    for flag, value, expected in (("--device", "tpu", "--device: expected cpu or cuda, got 'tpu'"),
                                  ("--time-limit", "0", "--time-limit: expected a positive number, got 0")):
        with pytest.raises(SystemExit):
            main(["bench", flag, value])
        assert expected in capsys.readouterr().err


def test_bench_without_a_target_runs_the_models_benchmark(monkeypatch):
    import visionssm.bench.scan as bench_scan

    got = []
    monkeypatch.setattr(bench_models, "main", lambda argv: got.append(("models", argv)) or 0)
    monkeypatch.setattr(bench_scan, "main", lambda argv: got.append(("scan", argv)) or 0)
    assert main(["bench"]) == 0
    assert main(["bench", "--models", "resnet18"]) == 0
    assert main(["bench", "scan", "--no-memory"]) == 0
    assert main(["bench", "models", "--train"]) == 0
    assert got == [("models", []), ("models", ["--models", "resnet18"]), ("scan", ["--no-memory"]),
                   ("models", ["--train"])]
    assert main(["bench", "frobnicate"]) == 2


def test_defaults_name_real_models():
    for name in bench_models.DEFAULT_MODELS + bench_models.FULL_MODELS:
        assert timm.is_model(name), name
    assert all(math.prod(parse_resolution(r)) > 0 for r in bench_models.FULL_RESOLUTIONS)


def test_the_scan_benchmark_measures_peak_memory_in_a_fresh_process():
    from visionssm.bench.scan import isolated_peak_mb

    peak = isolated_peak_mb("torch", (1, 8, 5, 2), "fb")
    assert peak >= 0 and not math.isnan(peak)
    row = run_isolated("visionssm.bench.scan:memory_case", dict(impl="no_such_backend", size=[1, 8, 5, 2],
                                                                mode="fwd"), time_limit_s=60)
    assert row["status"] == "unsupported" and "no_such_backend" in row["note"] and "peak_mb" not in row


def test_bench_dense_memory_records_a_row_per_case(tmp_path):
    assert main(["bench", "dense", "memory", "--resolutions", "64", "--backbones", "resnet18", "no_such_model",
                 "--out", str(tmp_path)]) == 0
    ok, bad = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert ok["backbone"] == "resnet18" and ok["res"] == 64
    assert ok["params_m"] > 0 and ok["peak_mb"] >= 0 and ok["forward_s"] > 0
    assert bad["backbone"] == "no_such_model" and "no_such_model" in bad["error"]
    assert "| resnet18 | 64 |" in (tmp_path / "memory.md").read_text()


@pytest.mark.parametrize("user", [None, "active"])
def test_case_processes_wait_passively_unless_the_user_chose(monkeypatch, user):
    """OpenMP workers that spin slow cases down 10-50x on a loaded machine (machine.omp_wait_policy):
    the case server starts with the passive policy, or the user's, and the machine line says which."""
    from visionssm.bench import isolated
    from visionssm.bench.machine import describe

    if user is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", user)
    started = {}

    def popen(*args, **kwargs):
        started.update(kwargs["env"])
        raise RuntimeError("not started")

    monkeypatch.setattr(isolated.subprocess, "Popen", popen)
    with pytest.raises(RuntimeError, match="not started"):
        isolated._Server()._start()
    assert started["OMP_WAIT_POLICY"] == (user or "passive")
    assert f"OMP_WAIT_POLICY={user or 'passive'}" in describe("cpu", cases_isolated=True)
    assert "OMP_WAIT_POLICY" not in describe("cpu")
