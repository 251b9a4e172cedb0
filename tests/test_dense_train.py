"""visionssm train --task segmentation|detection and visionssm eval of their checkpoints, on generated data."""

import json

import pytest
import torch

from visionssm import train as T
from visionssm.cli import main as cli_main
from visionssm.data import DataError
from visionssm.engine.checkpoints import load_checkpoint
from visionssm.engine.task import create_task
from visionssm.models.checkpoint import CheckpointError

VMAMBA = ["--model", "vmamba_tiny_s1l8", "--model-kwargs", "dims=8", "depths=[1,1,1,1]"]
VIM = ["--model", "vim_tiny_patch16_224", "--model-kwargs", "embed_dim=32", "depth=4"]
COMMON = ["--data", "shapes", "--img-size", "64", "--lr", "2e-3", "--warmup-epochs", "0", "--weight-decay", "0.01",
          "--workers", "0", "--no-progress", "--seed", "0"]
SEG = ["--task", "segmentation", *VMAMBA, *COMMON, "--decode-channels", "16", "--train-num-samples", "32",
       "--val-num-samples", "8", "-b", "8"]
SMALL_HEADS = ["--detector-kwargs", "box_batch_size_per_image=64", "rpn_batch_size_per_image=64",
               "rpn_pre_nms_top_n_train=200", "rpn_post_nms_top_n_train=100", "rpn_pre_nms_top_n_test=200",
               "rpn_post_nms_top_n_test=50", "box_detections_per_img=20"]


def rows(folder):
    with open(folder / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("backbone", [VMAMBA, VIM], ids=["vmamba", "vim"])
def test_segmentation_steps_lower_the_loss(backbone, fixed_batch_losses):
    args = T.parse_args(T.train_parser(), [*SEG, *backbone])
    task = create_task(args, progress=False)
    assert task.classes == ["background", "ellipse", "triangle", "rectangle", "pentagon"]
    batch = torch.utils.data.default_collate([task.train_set[i] for i in range(4)])
    assert batch[0].shape == (4, 3, 64, 64) and batch[1].shape == (4, 64, 64)
    losses = fixed_batch_losses(task, batch)
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("detector", ["mask_rcnn", "faster_rcnn"])
def test_detection_steps_lower_the_loss(detector, fixed_batch_losses):
    args = T.parse_args(T.train_parser(), ["--task", "detection", *VMAMBA, *COMMON, "--detector", detector,
                                           *SMALL_HEADS, "--train-num-samples", "4", "--val-num-samples", "2"])
    task = create_task(args, progress=False)
    assert task.fields[0] == "bbox_AP" and any(f.startswith("segm") for f in task.fields) == (detector == "mask_rcnn")
    batch = task.train_collate([task.train_set[i] for i in range(2)])
    losses = fixed_batch_losses(task, batch, steps=6, lr=5e-4)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "run"
    assert cli_main(["train", *SEG, "--epochs", "2", "--output", str(out)]) == 0
    return out


def test_segmentation_run_logs_and_checkpoints(seg_run):
    r = rows(seg_run)
    assert [x["epoch"] for x in r] == [0, 1] and r[1]["train_loss"] < r[0]["train_loss"]
    assert all(0 <= x["mIoU"] <= 100 and 0 <= x["aAcc"] <= 100 for x in r)
    header = (seg_run / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,lr,train_loss,val_loss,mIoU,aAcc,mAcc,ema_mIoU")
    ckpt = load_checkpoint(str(seg_run / "last.pth"))
    assert ckpt["config"]["task"] == "segmentation" and len(ckpt["classes"]) == 5
    summary = json.loads((seg_run / "summary.json").read_text())
    assert summary["best_mIoU"] == max(x["mIoU"] for x in r)


def test_eval_of_a_segmentation_checkpoint_matches_training(seg_run, capsys):
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(seg_run / "last.pth"), "--num-samples", "8", "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 8 and len(res["IoU"]) == 5
    assert res["mIoU"] == pytest.approx(rows(seg_run)[-1]["mIoU"], abs=1e-6)  # same weights, same 8 images
    # sliding windows of 48 px with stride 16 over the 64 px images: a different, valid result
    assert cli_main(["eval", "--checkpoint", str(seg_run / "last.pth"), "--num-samples", "8", "--workers", "0",
                     "--eval-mode", "slide", "--img-size", "48", "--eval-stride", "16"]) == 0
    slide = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= slide["mIoU"] <= 100


def test_segmentation_resume_continues_exactly(seg_run, tmp_path, crash_after):
    out = tmp_path / "resumed"
    with crash_after(2, "last.pth"):  # stopped at the end of epoch 0, after its evaluation
        cli_main(["train", *SEG, "--epochs", "2", "--output", str(out)])
    assert cli_main(["train", *SEG, "--epochs", "2", "--output", str(out), "--resume", str(out / "last.pth")]) == 0
    digests = json.loads((out / "summary.json").read_text())["rank_param_digests"]
    assert digests == json.loads((seg_run / "summary.json").read_text())["rank_param_digests"]
    assert [r["mIoU"] for r in rows(out)] == [r["mIoU"] for r in rows(seg_run)]


def test_shapes_on_disk_serve_both_tasks_as_the_builtin_set(tmp_path):
    root = tmp_path / "shapes"
    assert cli_main(["shapes", "--out", str(root), "--num-images", "6", "3", "--img-size", "64"]) == 0
    assert (root / "annotations" / "instances_train.json").exists() and (root / "classes.txt").exists()
    with pytest.raises(SystemExit):  # argparse's error: "--num-images: expected positive counts, got 0 for train"
        cli_main(["shapes", "--out", str(tmp_path / "none"), "--num-images", "0", "3"])
    assert not (tmp_path / "none").exists()
    flags = [*VMAMBA, "--data", str(root), "--img-size", "64", "--crop-size", "64"]
    seg = create_task(T.parse_args(T.train_parser(), ["--task", "segmentation", *flags]), progress=False)
    builtin = create_task(T.parse_args(T.train_parser(), ["--task", "segmentation", *flags[:-6], *COMMON,
                                                            "--val-num-samples", "3"]), progress=False)
    assert len(seg.train_set) == 6 and seg.classes == builtin.classes
    assert all(torch.equal(seg.val_set[i][1], builtin.val_set[i][1]) for i in range(3))  # same masks
    det = create_task(T.parse_args(T.train_parser(), ["--task", "detection", *flags, *SMALL_HEADS]),
                        progress=False)
    assert len(det.val_set) == 3 and det.classes == ["ellipse", "triangle", "rectangle", "pentagon"]


def test_detection_run_and_eval(tmp_path, capsys, monkeypatch):
    data = tmp_path / "coco"
    assert cli_main(["shapes", "--out", str(data), "--num-images", "8", "4", "--img-size", "64"]) == 0
    out = tmp_path / "det"
    assert cli_main(["train", "--task", "detection", *VMAMBA, *COMMON, "--data", str(data), "--detector",
                     "faster_rcnn", *SMALL_HEADS, "-b", "4", "--epochs", "1", "--output", str(out)]) == 0
    r = rows(out)
    assert set(r[0]) >= {"bbox_AP", "bbox_AP50", "bbox_AP75", "ema_bbox_AP"} and "segm_AP" not in r[0]
    capsys.readouterr()
    from visionssm.engine import evaluate

    batch_sizes, real = [], evaluate.DataLoader
    monkeypatch.setattr(evaluate, "DataLoader", lambda *a, **k: batch_sizes.append(k["batch_size"]) or real(*a, **k))
    assert cli_main(["eval", "--checkpoint", str(out / "last.pth"), "--num-samples", "4", "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 4 and res["bbox_AP"] == pytest.approx(r[0]["bbox_AP"], abs=1e-9)
    assert batch_sizes == [2]  # the detection default: every image's proposals go through the RoI heads at once


def test_clear_errors(tmp_path, monkeypatch, seg_run):
    with pytest.raises(DataError, match="does not exist"):
        T.train(T.parse_args(T.train_parser(), ["--task", "segmentation", *VMAMBA, "--data", str(tmp_path / "no"),
                                                "--output", str(tmp_path / "x")]))
    with pytest.raises(CheckpointError, match="segmentation checkpoint, but --task is 'detection'"):
        T.train(T.parse_args(T.train_parser(), ["--task", "detection", *VMAMBA, *COMMON, *SMALL_HEADS,
                                                "--train-num-samples", "4", "--val-num-samples", "2", "-b", "2",
                                                "--resume", str(seg_run / "last.pth"), "--output", str(tmp_path)]))
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pycocotools" else real(name, *a))
    with pytest.raises(ImportError, match=r"pycocotools.*visionssm\[dense\]"):
        create_task(T.parse_args(T.train_parser(), ["--task", "detection", *VMAMBA, *COMMON]), progress=False)


def test_pretrained_backbone_weights_are_loaded(tmp_path):
    import timm

    classifier = timm.create_model("vmamba_tiny_s1l8", dims=8, depths=[1, 1, 1, 1])
    path = tmp_path / "classifier.pth"
    torch.save({"model": classifier.state_dict()}, path)
    args = T.parse_args(T.train_parser(), [*SEG, "--pretrained-path", str(path)])
    task = create_task(args, progress=False)
    body = task.model.backbone.body.state_dict()
    want = classifier.state_dict()
    loaded = [k for k in body if k.removeprefix("model.") in want]
    assert len(loaded) > 20
    assert all(torch.equal(body[k], want[k.removeprefix("model.")]) for k in loaded)
    with pytest.raises(CheckpointError, match="--pretrained-path"):
        create_task(T.parse_args(T.train_parser(), [*SEG, "--pretrained-path", str(tmp_path / "no.pth")]), False)


@pytest.mark.slow
def test_two_process_ddp_segmentation_scores_the_whole_validation_set(tmp_path, capsys):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "visionssm",
           "train", *SEG, "--train-num-samples", "16", "--val-num-samples", "6", "-b", "4", "--epochs", "1",
           "--output", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and len(set(summary["rank_param_digests"])) == 1
    # each rank saw 3 of the 6 validation images; the logged mIoU is that of all 6 (synced confusion matrix)
    capsys.readouterr()
    assert cli_main(["eval", "--checkpoint", str(out / "last.pth"), "--num-samples", "6", "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["mIoU"] == pytest.approx(rows(out)[0]["mIoU"], abs=1e-6)
    assert res["val_loss"] == pytest.approx(rows(out)[0]["val_loss"], rel=1e-5)


def test_evaluation_batches_stack_only_images_of_one_size():
    from visionssm.dense.tasks import collate_eval

    same = [(torch.zeros(3, 8, 8), torch.zeros(8, 8, dtype=torch.long))] * 2
    images, masks = collate_eval(same)
    assert images.shape == (2, 3, 8, 8) and masks.shape == (2, 8, 8)
    mixed = [*same[:1], (torch.zeros(3, 8, 6), torch.zeros(8, 6, dtype=torch.long))]
    images, masks = collate_eval(mixed)
    assert isinstance(images, list) and [m.shape for m in masks] == [(8, 8), (8, 6)]


def test_an_official_layout_upernet_checkpoint_loads_whole(tmp_path):
    """mmseg's layout of VMamba's released UperNet files: backbone.<classifier keys>, backbone.outnorm{i},
    decode_head.*, auxiliary_head.*, under 'state_dict' with mmengine's 'meta'."""
    args = T.parse_args(T.train_parser(), SEG)
    source = create_task(args, progress=False).model.eval()
    official = {k.replace("backbone.body.model.", "backbone."): v for k, v in source.state_dict().items()}
    assert any(k.startswith("backbone.outnorm3.") for k in official)
    official["backbone.layers.0.blocks.0.op.x_proj.weight"] = official.pop(
        "backbone.layers.0.blocks.0.op.x_proj_weight")[:, :, :, None]  # the one-file release's storage
    path = tmp_path / "upernet_official.pth"
    torch.save({"state_dict": official, "meta": {"epoch": 160}}, path)
    args = T.parse_args(T.train_parser(), [*SEG, "--seed", "1", "--pretrained-path", str(path)])
    model = create_task(args, progress=False).model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)["out"], source(x)["out"])
    del official["decode_head.conv_seg.weight"]
    torch.save({"state_dict": official}, path)
    with pytest.raises(ValueError, match="missing.*decode_head.conv_seg.weight"):
        create_task(args, progress=False)


def test_a_bad_mask_is_an_error_before_training_starts(tmp_path):
    from PIL import Image

    root = tmp_path / "seg"
    (root / "classes.txt").parent.mkdir()
    (root / "classes.txt").write_text("sky\nroad\n")
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 32), (10 * i, 0, 0)).save(root / "images" / split / f"{i}.png")
            Image.new("L", (32, 32), i % 2).save(root / "masks" / split / f"{i}.png")
    Image.new("L", (32, 32), 7).save(root / "masks" / "train" / "3.png")  # the last training mask
    out = tmp_path / "run"
    args = ["--task", "segmentation", *VMAMBA, *COMMON, "--data", str(root), "--decode-channels", "16", "-b", "2",
            "--epochs", "1", "--output", str(out)]
    with pytest.raises(DataError, match=r"masks/train/3\.png' holds the label 7"):
        T.train(T.parse_args(T.train_parser(), args))
    assert not (out / "last.pth").exists()
    Image.new("L", (16, 32), 0).save(root / "masks" / "train" / "3.png")
    with pytest.raises(DataError, match=r"3\.png' is 16x32 but its image .* is 32x32"):
        T.train(T.parse_args(T.train_parser(), args))
