"""visionssm train / eval / predict: learning, checkpoints, exact resume, DDP on CPU, clear errors.

Every run is a 32-px Vim of width 32 and depth 2 on a slice of the digits, a few steps long.
"""

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from visionssm import train as T  # noqa: E402
from visionssm.cli import main as cli_main  # noqa: E402
from visionssm.data import DataError  # noqa: E402

TINY = ["--model", "vim_tiny_patch16_224", "--model-kwargs", "embed_dim=32", "depth=2",
        "--data", "digits", "--train-num-samples", "192", "--val-num-samples", "96", "--batch-size", "32",
        "--lr", "3e-3", "--warmup-epochs", "0", "--workers", "0", "--no-progress", "--seed", "3"]


def run(out, *extra):
    return T.train(T.parse_args(T.train_parser(), [*TINY, "--output", str(out), *extra]))


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """The uninterrupted reference run: two epochs of six steps, through the command line."""
    out = tmp_path_factory.mktemp("train") / "run"
    assert cli_main(["train", *TINY, "--epochs", "2", "--model-ema", "--model-ema-decay", "0.9",
                     "--output", str(out)]) == 0
    return out


def test_two_epochs_improve_the_loss_and_write_checkpoints(two_epochs):
    rows = read_metrics(two_epochs)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert rows[1]["val_loss"] < 2.3  # below chance (ln 10)
    ckpt = T.load_checkpoint(str(two_epochs / "last.pth"))
    assert ckpt["epoch"] == 2 and ckpt["step"] == 12 and ckpt["step_in_epoch"] == 0
    assert {"model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "config", "classes"} <= set(ckpt)
    assert ckpt["config"]["model_kwargs"] == {"embed_dim": 32, "depth": 2}
    assert (two_epochs / "best.pth").exists() and (two_epochs / "metrics.csv").exists()
    summary = json.loads((two_epochs / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["train_img_per_s"] > 0 and summary["peak_memory_mb"] > 0
    assert not [p for p in os.listdir(two_epochs) if p.endswith(".tmp")]


def test_no_weight_decay_on_ssm_parameters():
    args = T.parse_args(T.train_parser(), TINY)
    model = T.create_model(args.model, 10, 32, args.model_kwargs)
    opt = T.create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.A_b_log",
            "layers.0.mixer.D_b", "layers.0.norm.weight", "head.bias"} <= no_decay
    assert "layers.0.mixer.in_proj.weight" not in no_decay


class Crash(Exception):
    pass


def crash_on_save(monkeypatch, call):
    """Stop the run right after the ``call``-th write of last.pth (the file itself is whole)."""
    calls = []
    real = T.save_checkpoint

    def save(state, path):
        real(state, path)
        if path.endswith("last.pth"):
            calls.append(path)
            if len(calls) == call:
                raise Crash(f"stopped after write {call}")

    monkeypatch.setattr(T, "save_checkpoint", save)


def test_resume_mid_epoch_and_at_an_epoch_end_reproduces_the_uninterrupted_run(two_epochs, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    extra = ["--epochs", "2", "--model-ema", "--model-ema-decay", "0.9", "--checkpoint-steps", "4"]
    with monkeypatch.context() as m:
        crash_on_save(m, 1)  # at step 4, in the middle of epoch 0
        with pytest.raises(Crash):
            run(out, *extra)
    assert T.load_checkpoint(str(out / "last.pth"))["step"] == 4
    with monkeypatch.context() as m:
        crash_on_save(m, 1)  # at the end of epoch 0
        with pytest.raises(Crash):
            run(out, *extra, "--resume", str(out))
    assert T.load_checkpoint(str(out / "last.pth"))["step"] == 6
    summary = run(out, *extra, "--resume", str(out / "last.pth"))

    reference = json.loads((two_epochs / "summary.json").read_text())
    assert summary["rank_param_digests"] == reference["rank_param_digests"]
    a, b = T.load_checkpoint(str(two_epochs / "last.pth")), T.load_checkpoint(str(out / "last.pth"))
    for k in a["model_ema"]:
        assert torch.equal(a["model_ema"][k], b["model_ema"][k]), k
    assert read_metrics(out)[-1]["train_loss"] == read_metrics(two_epochs)[-1]["train_loss"]


def test_a_truncated_checkpoint_is_a_clear_error(two_epochs, tmp_path):
    data = (two_epochs / "last.pth").read_bytes()
    bad = tmp_path / "last.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(T.CheckpointError, match="truncated or corrupted"):
        T.load_checkpoint(str(bad))
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(T.CheckpointError, match="cannot be read"):
        run(tmp_path / "out", "--epochs", "1", "--resume", str(bad))
    with pytest.raises(T.CheckpointError, match="does not exist"):
        T.load_checkpoint(str(tmp_path / "missing.pth"))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    T.save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, str(path))
    before = path.read_bytes()

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(T.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        T.save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # the temporary file is gone
    monkeypatch.undo()
    assert T.load_checkpoint(str(path))["epoch"] == 1


def test_a_checkpoint_of_another_model_names_the_keys(two_epochs, tmp_path):
    with pytest.raises(T.CheckpointError, match="does not fit the model: missing keys"):
        run(tmp_path / "out", "--epochs", "1", "--model-kwargs", "embed_dim=32", "depth=3",
            "--resume", str(two_epochs / "last.pth"))


def test_eval_and_predict_a_checkpoint(two_epochs, tmp_path, capsys):
    best = json.loads((two_epochs / "summary.json").read_text())["best_top1"]
    assert cli_main(["eval", "--checkpoint", str(two_epochs / "best.pth"), "--num-samples", "96",
                     "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 96 and res["top1"] <= best + 1e-9  # best is max(model, EMA)
    assert cli_main(["eval", "--checkpoint", str(two_epochs / "last.pth"), "--num-samples", "32", "--workers", "0",
                     "--img-size", "48", "--use-ema"]) == 0  # position embeddings resampled to 3x3
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["img_size"] == 48

    from PIL import Image

    from visionssm.data import Digits

    Digits("val")[0][0].save(tmp_path / "digit.png")
    assert cli_main(["predict", "--checkpoint", str(two_epochs / "best.pth"), "--topk", "3",
                     str(tmp_path / "digit.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "digit.png")) and len(line.split(",")) == 3
    assert Image.open(tmp_path / "digit.png").size == (8, 8)


def test_a_nan_loss_stops_with_the_step_number(tmp_path, monkeypatch):
    real = T.LabelSmoothingCrossEntropy.forward
    calls = []

    def nan_on_third(self, x, target):
        calls.append(1)
        loss = real(self, x, target)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(T.LabelSmoothingCrossEntropy, "forward", nan_on_third)
    with pytest.raises(T.NonFiniteLossError, match=r"became nan at step 3 \(epoch 0"):
        run(tmp_path / "nan", "--epochs", "1")


def test_amp_bfloat16_on_cpu_with_accumulation_and_mixup(tmp_path):
    summary = run(tmp_path / "amp", "--epochs", "1", "--amp", "--grad-accum-steps", "2", "--mixup", "0.8",
                  "--cutmix", "1.0", "--clip-grad", "1.0", "--train-num-samples", "128")
    assert summary["steps"] == 2 and summary["final"]["train_loss"] == summary["final"]["train_loss"]  # not NaN


def test_clear_errors_for_bad_model_data_and_config(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'vim_tinyy_patch16_224'; did you mean"):
        T.create_model("vim_tinyy_patch16_224", 10)
    with pytest.raises(DataError, match="does not exist"):
        run(tmp_path / "o", "--data", str(tmp_path / "no_such_folder"))
    with pytest.raises(DataError, match="neither a built-in data set"):
        run(tmp_path / "o", "--data", "imagenet_please")
    (tmp_path / "imgs" / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        run(tmp_path / "o", "--data", str(tmp_path / "imgs"))
    with pytest.raises(ValueError, match="--model and --data are required"):
        T.train(T.parse_args(T.train_parser(), ["--data", "digits"]))

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("batch-size: 16\nlr: 0.01\nmodel_kwargs: {embed_dim: 32}\n")
    args = T.parse_args(T.train_parser(), ["--config", str(cfg), "--lr", "0.02"])
    assert (args.batch_size, args.lr, args.model_kwargs) == (16, 0.02, {"embed_dim": 32})  # flags win
    cfg.write_text("batch_sise: 16\n")
    with pytest.raises(SystemExit):
        T.parse_args(T.train_parser(), ["--config", str(cfg)])


@pytest.mark.slow
def test_two_process_gloo_ddp_keeps_the_ranks_identical(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "visionssm", "train", *TINY, "--train-num-samples", "96", "--val-num-samples", "40",
           "--batch-size", "8", "--grad-accum-steps", "2", "--epochs", "1", "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3  # 96 / 2 ranks / 8 / 2 micro-batches
    digests = summary["rank_param_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert read_metrics(out)[0]["top1"] >= 0 and T.load_checkpoint(str(out / "last.pth"))["world_size"] == 2
    assert len(T.load_checkpoint(str(out / "last.pth"))["rng"]) == 2  # both ranks' RNG states
