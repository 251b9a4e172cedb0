"""visionssm train / eval / predict: learning, checkpoints, exact resume, DDP on CPU, clear errors.

Every run is a 32-px Vim of width 32 and depth 2 on a slice of the digits, a few steps long.
"""

import json
import math
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402

from visionssm import train as T  # noqa: E402
from visionssm.cli import main as cli_main  # noqa: E402
from visionssm.data import DataError  # noqa: E402
from visionssm.engine import checkpoints  # noqa: E402
from visionssm.engine.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from visionssm.engine.loop import NonFiniteLossError  # noqa: E402
from visionssm.engine.models import create_model  # noqa: E402
from visionssm.models.checkpoint import CheckpointError  # noqa: E402

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
    ckpt = load_checkpoint(str(two_epochs / "last.pth"))
    assert ckpt["epoch"] == 2 and ckpt["step"] == 12 and ckpt["step_in_epoch"] == 0
    assert {"model", "model_ema", "optimizer", "scheduler", "scaler", "rng", "config", "classes"} <= set(ckpt)
    assert ckpt["config"]["model_kwargs"] == {"embed_dim": 32, "depth": 2}
    assert (two_epochs / "best.pth").exists() and (two_epochs / "metrics.csv").exists()
    summary = json.loads((two_epochs / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["train_img_per_s"] > 0 and summary["peak_memory_mb"] > 0
    assert not [p for p in os.listdir(two_epochs) if p.endswith(".tmp")]


def test_no_weight_decay_on_ssm_parameters():
    args = T.parse_args(T.train_parser(), TINY)
    model = create_model(args.model, 10, 32, args.model_kwargs)
    opt = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert {"pos_embed", "cls_token", "layers.0.mixer.A_log", "layers.0.mixer.D", "layers.0.mixer.A_b_log",
            "layers.0.mixer.D_b", "layers.0.norm.weight", "head.bias"} <= no_decay
    assert "layers.0.mixer.in_proj.weight" not in no_decay


def test_resume_mid_epoch_and_at_an_epoch_end_reproduces_the_uninterrupted_run(two_epochs, tmp_path, crash_after):
    out = tmp_path / "resumed"
    extra = ["--epochs", "2", "--model-ema", "--model-ema-decay", "0.9", "--checkpoint-steps", "4"]
    with crash_after(1, "last.pth"):  # at step 4, in the middle of epoch 0
        run(out, *extra)
    assert load_checkpoint(str(out / "last.pth"))["step"] == 4
    with crash_after(1, "last.pth"):  # at the end of epoch 0's training, before its evaluation
        run(out, *extra, "--resume", str(out))
    assert load_checkpoint(str(out / "last.pth"))["step"] == 6
    summary = run(out, *extra, "--resume", str(out / "last.pth"))

    reference = json.loads((two_epochs / "summary.json").read_text())
    assert summary["rank_param_digests"] == reference["rank_param_digests"]
    a, b = load_checkpoint(str(two_epochs / "last.pth")), load_checkpoint(str(out / "last.pth"))
    for k in a["model_ema"]:
        assert torch.equal(a["model_ema"][k], b["model_ema"][k]), k
    assert read_metrics(out)[-1]["train_loss"] == read_metrics(two_epochs)[-1]["train_loss"]


def test_a_truncated_checkpoint_is_a_clear_error(two_epochs, tmp_path):
    data = (two_epochs / "last.pth").read_bytes()
    bad = tmp_path / "last.pth"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="it is truncated, corrupted or not a PyTorch checkpoint"):
        load_checkpoint(str(bad))
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        run(tmp_path / "out", "--epochs", "1", "--resume", str(bad))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 1}, str(path))
    before = path.read_bytes()

    def half_then_fail(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint({"model": {"w": torch.zeros(3)}, "epoch": 2}, str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.pth"]  # the temporary file is gone
    monkeypatch.undo()
    assert load_checkpoint(str(path))["epoch"] == 1


def test_a_checkpoint_of_another_model_names_the_keys(two_epochs, tmp_path):
    with pytest.raises(CheckpointError, match=r"does not fit VisionMamba: missing keys \d+ \(layers\.2\."):
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
    assert cli_main(["eval", "--checkpoint", str(two_epochs / "best.pth"), "--split", "train", "--workers", "0"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 1497  # digits' training split

    from PIL import Image

    from visionssm.data import Digits

    Digits("val")[0][0].save(tmp_path / "digit.png")
    assert cli_main(["predict", "--checkpoint", str(two_epochs / "best.pth"), "--topk", "3",
                     str(tmp_path / "digit.png")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "digit.png")) and len(line.split(",")) == 3
    assert Image.open(tmp_path / "digit.png").size == (8, 8)


def test_a_nan_loss_stops_with_the_step_number(tmp_path, monkeypatch):
    real = LabelSmoothingCrossEntropy.forward
    calls = []

    def nan_on_third(self, x, target):
        calls.append(1)
        loss = real(self, x, target)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(LabelSmoothingCrossEntropy, "forward", nan_on_third)
    with pytest.raises(NonFiniteLossError, match=r"became nan at step 3 \(epoch 0"):
        run(tmp_path / "nan", "--epochs", "1")


def test_amp_bfloat16_on_cpu_with_accumulation_and_mixup(tmp_path):
    summary = run(tmp_path / "amp", "--epochs", "1", "--amp", "--grad-accum-steps", "2", "--mixup", "0.8",
                  "--cutmix", "1.0", "--clip-grad", "1.0", "--train-num-samples", "128")
    assert summary["steps"] == 2 and math.isfinite(summary["final"]["train_loss"])


def test_clear_errors_for_bad_model_data_and_config(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'vim_tinyy_patch16_224'; did you mean"):
        create_model("vim_tinyy_patch16_224", 10)
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
def test_two_process_gloo_ddp_keeps_the_ranks_identical(tmp_path, capsys):
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
    assert load_checkpoint(str(out / "last.pth"))["world_size"] == 2
    assert len(load_checkpoint(str(out / "last.pth"))["rng"]) == 2  # both ranks' RNG states
    # the validation scores summed over the two ranks' shards are those of one process on the whole set
    assert cli_main(["eval", "--checkpoint", str(out / "last.pth"), "--num-samples", "40", "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 40 and res["top1"] == pytest.approx(read_metrics(out)[0]["top1"])


# --- run folders, resume and faults -------------------------------------------------------------------


def test_a_bare_resume_restores_the_whole_run_and_says_what_it_overrides(tmp_path, capsys):
    out = tmp_path / "run"
    run(out, "--epochs", "1", "--train-num-samples", "96")
    capsys.readouterr()
    assert cli_main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "--resume: epochs: 1 in the run, 2 now" in printed
    ckpt = load_checkpoint(str(out))
    cfg = ckpt["config"]
    assert (cfg["model_kwargs"], cfg["batch_size"], cfg["train_num_samples"], cfg["lr"]) == \
           ({"embed_dim": 32, "depth": 2}, 32, 96, 3e-3)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6  # 96 images / 32 a step, two epochs, in the same folder
    assert [r["epoch"] for r in read_metrics(out)] == [0, 1]


def test_a_finished_run_resumed_does_nothing_and_keeps_its_summary(two_epochs, tmp_path, capsys):
    import shutil

    out = tmp_path / "done"
    shutil.copytree(two_epochs, out)
    before = (out / "summary.json").read_text()
    summary = T.train(T.parse_args(T.train_parser(), ["--resume", str(out)]))
    assert "has finished its 2 epochs; nothing to do" in capsys.readouterr().out
    assert (out / "summary.json").read_text() == before and summary["steps"] == 12


def test_an_earlier_run_folder_is_refused_unless_resumed_or_overwritten(two_epochs, tmp_path):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(two_epochs, out)
    with pytest.raises(ValueError, match=r"--output: .* holds an earlier run \(last.pth, best.pth"):
        run(out, "--epochs", "1")
    assert len(read_metrics(out)) == 2  # untouched
    summary = run(out, "--epochs", "1", "--overwrite")
    assert summary["steps"] == 6 and [r["epoch"] for r in read_metrics(out)] == [0]


@pytest.mark.parametrize("call", [1, 2, 3])
def test_a_kill_between_checkpoint_writes_leaves_best_last_and_summary_consistent(tmp_path, crash_after, call):
    # one epoch writes last.pth (trained), best.pth, last.pth (evaluated), then summary.json
    out = tmp_path / "run"
    with crash_after(call):
        run(out, "--epochs", "1")
    (out / ".last.pth.killed.tmp").write_bytes(b"half")  # what a kill during a write leaves
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 0, "st')  # a torn line
    summary = run(out, "--epochs", "1", "--resume", str(out))
    best = load_checkpoint(str(out / "best.pth"))
    last = load_checkpoint(str(out / "last.pth"))
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [0] and summary["final"] == rows[0]
    assert summary["best_epoch"] == 0 and best["epoch"] == 1 and best["best"]["top1"] == summary["best_top1"]
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert summary["train_img_per_s"] > 0
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header and one row


@pytest.mark.parametrize("flag,argv", [
    ("--val-num-samples", ["train", *TINY, "--val-num-samples", "0"]),
    ("--checkpoint-steps", ["train", *TINY, "--checkpoint-steps", "-1"]),
    ("--epochs", ["train", *TINY, "--epochs", "0"]),
    ("--num-samples", ["eval", "--checkpoint", "x.pth", "--num-samples", "0"]),
    ("--topk", ["predict", "--checkpoint", "x.pth", "--topk", "0", "a.png"]),
])
def test_flags_that_would_do_nothing_are_refused(flag, argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2
    assert f"argument {flag}: expected an int >= " in capsys.readouterr().err


def test_user_errors_on_the_command_line_are_one_line_and_status_2(tmp_path, capsys):
    bad = tmp_path / "random.pth"
    bad.write_bytes(os.urandom(2000))
    assert cli_main(["eval", "--checkpoint", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot be read" in err and "weights_only" not in err
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(CheckpointError):  # --debug shows the exception itself
        cli_main(["--debug", "eval", "--checkpoint", str(bad)])


def make_folder(root, classes, per_class=4, size=16):
    from PIL import Image

    for split in ("train", "val"):
        for i, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for j in range(per_class):
                Image.new("RGB", (size, size), (40 * i, 10 * j, 128)).save(root / split / name / f"{j}.png")
    return root


def test_eval_refuses_data_with_other_class_names(two_epochs, tmp_path):
    data = make_folder(tmp_path / "other", [f"c{i}" for i in range(10)], per_class=1)
    with pytest.raises(DataError, match=r"the classes of .* \['c0', 'c1', .* are not the checkpoint's \['0', '1'"):
        T.evaluate_main(["--checkpoint", str(two_epochs / "best.pth"), "--data", str(data), "--workers", "0"])


def official_layout(two_epochs, tmp_path):
    """The trained weights saved as the official releases are: {'model': ..., 'args': Namespace}."""
    import argparse

    ckpt = load_checkpoint(str(two_epochs / "best.pth"))
    path = tmp_path / "official.pth"
    torch.save({"model": ckpt["model"], "args": argparse.Namespace(model="vim_tiny_patch16_224", lr=1e-3)}, path)
    return path


def test_eval_and_predict_of_an_official_layout_file_use_its_trained_head(two_epochs, tmp_path, capsys):
    path = official_layout(two_epochs, tmp_path)
    kw = ["--model", "vim_tiny_patch16_224", "--model-kwargs", "embed_dim=32", "depth=2"]
    common = ["--data", "digits", "--num-samples", "64", "--workers", "0", "--img-size", "32"]
    assert cli_main(["eval", "--checkpoint", str(two_epochs / "best.pth"), *common]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert cli_main(["eval", "--checkpoint", str(path), *kw, *common]) == 0
    official = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the same 10-class weights (ImageNet's normalisation: the file knows no data set, so scores differ a little)
    assert official["count"] == 64 and abs(official["top1"] - ours["top1"]) < 10
    from visionssm.engine.models import model_from_checkpoint

    model, info = model_from_checkpoint(str(path), "vim_tiny_patch16_224", {"embed_dim": 32, "depth": 2}, img_size=32)
    trained = load_checkpoint(str(two_epochs / "best.pth"))["model"]
    assert [k for k, v in model.state_dict().items() if not torch.equal(v, trained[k])] == []

    from visionssm.classification import eval_transform
    from visionssm.data import Digits, read_image

    Digits("val")[0][0].save(tmp_path / "digit.png")
    assert cli_main(["predict", "--checkpoint", str(path), *kw, "--img-size", "32", "--topk", "10",
                     str(tmp_path / "digit.png")]) == 0
    probs = [float(p.split()[-1]) for p in capsys.readouterr().out.split(": ", 1)[1].split(", ")]
    with torch.no_grad():
        want = model(eval_transform(info["data_config"])(read_image(str(tmp_path / "digit.png")))[None])
    assert probs == pytest.approx(sorted(want.softmax(-1)[0].tolist(), reverse=True), abs=1e-3)  # the 10 trained
    assert cli_main(["predict", str(tmp_path / "digit.png"), "--checkpoint", str(path), *kw, "num_classes=1000"]) == 2
    assert "has 10 classes; a different number would replace the trained head" in capsys.readouterr().err


def test_saved_model_kwargs_that_do_not_fit_the_model_are_named(two_epochs, capsys):
    assert cli_main(["eval", "--checkpoint", str(two_epochs / "best.pth"), "--model", "resnet18"]) == 2
    err = capsys.readouterr().err
    assert "model kwargs {'embed_dim': 32, 'depth': 2} do not fit --model resnet18" in err


def test_a_bad_image_is_named_and_can_be_skipped(tmp_path, capsys):
    data = make_folder(tmp_path / "data", ["a", "b"], per_class=8)
    (data / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    args = ["--data", str(data), "--img-size", "16", "--batch-size", "4", "--epochs", "1"]
    with pytest.raises(DataError, match=r"image '.*broken\.png' cannot be read"):
        run(tmp_path / "o1", *args)
    summary = run(tmp_path / "o2", *args, "--skip-bad-images")
    assert summary["steps"] == 4 and "left out 1 unreadable image(s)" in capsys.readouterr().err


def test_a_bad_validation_image_loses_no_training(tmp_path):
    data = make_folder(tmp_path / "data", ["a", "b"], per_class=8)
    (data / "val" / "a" / "broken.png").write_bytes(b"garbage")
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"broken\.png"):
        run(out, "--data", str(data), "--img-size", "16", "--batch-size", "4", "--epochs", "1")
    ckpt = load_checkpoint(str(out))
    assert (ckpt["epoch"], ckpt["step"], ckpt["step_in_epoch"]) == (0, 4, 4)  # trained, waiting for evaluation
    (data / "val" / "a" / "broken.png").unlink()
    summary = run(out, "--data", str(data), "--img-size", "16", "--batch-size", "4", "--epochs", "1",
                  "--resume", str(out))
    assert summary["steps"] == 4 and [r["epoch"] for r in read_metrics(out)] == [0]


def test_a_subset_of_a_folder_takes_every_class_and_16_bit_images_keep_their_grey(tmp_path):
    import numpy as np
    from PIL import Image

    from visionssm.data import create_dataset, read_image

    data = make_folder(tmp_path / "data", ["a", "b", "c", "d"], per_class=10)
    ds = create_dataset(str(data), "train", num_samples=12, seed=1)
    assert len(ds) == 12 and len(set(ds.targets)) >= 3
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "grey16.png")
    assert abs(int(np.asarray(read_image(str(tmp_path / "grey16.png")))[0, 0, 0]) - 128) <= 1


def test_plot_draws_the_curves_of_a_run(two_epochs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert cli_main(["plot", str(two_epochs), "--out", str(out)]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[0] > 500 and len(im.convert("L").getcolors(maxcolors=256 * 256)) > 10  # drawn, not blank
    assert cli_main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "RUN_DIR: expected a run folder" in capsys.readouterr().err
