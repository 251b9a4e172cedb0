"""--task video: VideoTask on the generated cue-probe clips and on a folder of tiny videos, the
multi-view evaluation, and a whole run through the engine's loop and evaluation."""

import contextlib
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from visionssm import train as T
from visionssm.engine.evaluate import evaluate_checkpoint
from visionssm.engine.models import model_from_checkpoint
from visionssm.video_task import VideoTask

MODEL = ["--model", "videomamba_tiny_f8_224", "--model-kwargs", "embed_dim=32", "depth=2"]
COMMON = ["--img-size", "32", "--lr", "2e-3", "--warmup-epochs", "0", "--weight-decay", "0.01", "--workers", "0",
          "--no-progress", "--seed", "0", "--smoothing", "0"]


def video_args(*extra, num_frames=4, **attrs):
    args = T.parse_args(T.train_parser(), [*MODEL, *COMMON, "--data", "cue-probe", "--train-num-samples", "16",
                                           "--val-num-samples", "8", "-b", "8", *extra])
    args.task, args.num_frames = "video", num_frames
    for k, v in attrs.items():
        setattr(args, k, v)
    return args


def test_cue_probe_steps_lower_the_loss(fixed_batch_losses):
    task = VideoTask(video_args())
    assert task.classes == ["next", "previous"]
    # the generated set is normalised with its own statistics, not ImageNet's
    assert task.data_config == dict(img_size=32, num_frames=4, mean=(0.19,) * 3, std=(0.14,) * 3, test_clips=1,
                                    test_crops=1)
    assert VideoTask(video_args(mean=[0.5] * 3, std=[0.25] * 3), train=False).data_config["std"] == (0.25,) * 3
    assert task.model.num_frames == 4 and len(task.train_set) == 16 and len(task.val_set) == 8
    batch = default_collate([task.train_set[i] for i in range(8)])
    assert batch[0].shape == (8, 3, 4, 32, 32) and batch[1].tolist() == [0, 1] * 4
    assert task.train_set.ds.fresh and not task.val_set.ds.fresh  # new training clips every epoch
    losses = fixed_batch_losses(task, batch)
    assert losses[-1] < 0.85 * losses[0], losses


def test_the_frame_averaging_baseline_trains_through_the_task(fixed_batch_losses):
    task = VideoTask(video_args(model="videomamba_tiny_frameavg_f8_224"))
    assert type(task.model).__name__ == "VideoMambaFrameAvg" and task.model.num_frames == 4
    assert task.data_config["num_frames"] == 4
    batch = default_collate([task.train_set[i] for i in range(8)])
    losses = fixed_batch_losses(task, batch)
    assert losses[-1] < 0.85 * losses[0], losses
    # blind to the order of the frames: a clip played backwards (the other label's order) scores the same
    task.model.eval()
    with torch.no_grad():
        assert torch.allclose(task.model(batch[0]), task.model(batch[0].flip(2)), atol=1e-6)


def test_clip_length_defaults_to_the_models():
    task = VideoTask(video_args(num_frames=None), train=False)
    assert task.data_config["num_frames"] == 8 and task.val_set[0][0].shape == (3, 8, 32, 32)
    assert not hasattr(task, "train_set")


def write_video(path, num_frames, value):
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        rng = np.random.default_rng(value)
        for _ in range(num_frames):
            frame = np.clip(rng.normal(value, 30, (32, 48, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def video_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for split, n in (("train", 3), ("val", 2)):
        for c, value in (("dark", 60), ("light", 190)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                write_video(root / split / c / f"{i}.mp4", 9 + i, value + i)
    return root


def test_folder_steps_lower_the_loss_and_views_are_averaged(video_folder, fixed_batch_losses):
    args = video_args(test_clips=2, test_crops=3)
    args.data, args.train_num_samples, args.val_num_samples = str(video_folder), None, None
    task = VideoTask(args)
    assert task.classes == ["dark", "light"] and len(task.train_set) == 6 and len(task.val_set) == 4
    batch = default_collate([task.train_set[i] for i in range(6)])
    assert batch[0].shape == (6, 3, 4, 32, 32)
    losses = fixed_batch_losses(task, batch)
    assert losses[-1] < 0.85 * losses[0], losses
    views, label = task.val_set[3]
    assert views.shape == (6, 3, 4, 32, 32) and label == 1  # 2 clips x 3 crops
    res = task.evaluate(task.model, DataLoader(task.val_set, batch_size=3), torch.device("cpu"), contextlib.nullcontext)
    # by hand: every video's 6 views through the model, softmax, mean
    task.model.eval()
    with torch.no_grad():
        probs = torch.stack([task.model(task.val_set[i][0]).softmax(-1).mean(0) for i in range(4)])
    labels = torch.tensor([0, 0, 1, 1])
    assert res["count"] == 4
    assert res["top1"] == pytest.approx(100 * (probs.argmax(1) == labels).float().mean().item())
    assert res["top5"] == 100.0  # two classes
    assert res["val_loss"] == pytest.approx(-probs[torch.arange(4), labels].log().mean().item(), rel=1e-5)
    assert "(2 clips x 3 crops)" in task.describe(res)


def test_bad_flags_are_refused():
    with pytest.raises(ValueError, match="--model: expected a video model.*got 'vim_tiny_patch16_224'"):
        VideoTask(video_args(model="vim_tiny_patch16_224"))
    with pytest.raises(ValueError, match="--mixup: not supported by --task video"):
        VideoTask(video_args(mixup=0.8))
    with pytest.raises(ValueError, match="--test-crops: expected an int >= 1, got 0"):
        VideoTask(video_args(test_crops=0))
    with pytest.raises(ValueError, match="--test-clips: cue-probe"):
        VideoTask(video_args(test_clips=4))


def test_a_run_through_the_engine_and_its_evaluation(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec  # the generated task decodes no file: it runs without PyAV
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "av" else real(name, *a))
    out = tmp_path / "run"
    args = video_args("--epochs", "2", "--output", str(out))
    T.train(args)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1] and all(0 <= r["top1"] <= 100 for r in rows)
    ev = T.eval_parser().parse_args(["--checkpoint", str(out / "last.pth"), "--workers", "0", "--num-samples", "8"])
    res = evaluate_checkpoint(ev, T.train_defaults())
    log = capsys.readouterr().out  # the logs count clips, not images
    assert "validation clips" in log and "clips/s" in log and "(8 clips, 32 px)" in log
    assert "img/s" not in log and " images" not in log
    assert res["count"] == 8 and res["top1"] == pytest.approx(rows[-1]["top1"])
    # predict/export rebuild the run's model with its clip length (4 frames, the model's default is 8)
    model, info = model_from_checkpoint(str(out / "last.pth"))
    assert model.num_frames == 4 and info["config"]["num_frames"] == 4
