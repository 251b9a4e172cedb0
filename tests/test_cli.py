"""The command line: dispatch, help, bad input, and the scan benchmark end to end on tiny sizes."""

import csv

import pytest

from visionssm.bench.scan import parse_size
from visionssm.cli import main


def test_no_command_prints_usage(capsys):
    assert main([]) == 2
    assert "usage: visionssm [--debug] <command>" in capsys.readouterr().out


def test_unknown_command_is_a_clear_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--epochs", "x"], "visionssm train: error: argument --epochs: expected an int >= 1, got 'x'"),
    (["bench", "--memory-runs", "0"], "visionssm bench: error: --memory-runs: expected >= 1, got 0"),
    (["eval"], "visionssm eval: error: the following arguments are required: --checkpoint"),
])
def test_a_bad_flag_is_one_line_and_status_2(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [expected]  # not argparse's usage before it
    import argparse
    assert "usage:" in argparse.ArgumentParser(prog="x").format_usage()  # argparse itself is left as it was


def test_models_lists_both_families(capsys):
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert "vim_tiny_patch16_224" in names and "vmamba_tiny_s1l8" in names


def test_bench_scan_writes_a_row_per_case(tmp_path, capsys):
    out = tmp_path / "scan"
    assert main(["bench", "scan", "--sizes", "1x8x5x2", "2x4x3x2", "--no-memory", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {(r["size"], r["impl"]) for r in rows} >= {("1x8x5x2", "cpu"), ("2x4x3x2", "torch"),
                                                      ("1x8x5x2", "reference")}
    assert all(float(r["fwd_ms"]) > 0 for r in rows)
    table = [line for line in (out / "results.md").read_text().splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 1  # header + one line per case
    assert "machine:" in capsys.readouterr().out


def test_bench_scan_rejects_a_malformed_size():
    with pytest.raises(ValueError, match=r"--sizes: expected BxDxLxN such as 1x384x197x16, got '1x2x3'"):
        parse_size("1x2x3")
    with pytest.raises(ValueError, match=r"--sizes: every dimension must be >= 1, got '0x2x3x4'"):
        parse_size("0x2x3x4")
