"""Video models through ``visionssm predict`` and ``visionssm eval``: a video file scored as the video
task scores a validation video, files of the wrong kind refused in one line, and a video model file
as released evaluated by the video task."""

import argparse
import json

import numpy as np
import pytest
import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from visionssm import train as T
from visionssm.cli import main as cli_main
from visionssm.engine.models import model_from_checkpoint
from visionssm.video import VideoFolder, VideoTransform
from visionssm.video_task import video_scores

pytest.importorskip("av")

NAME, KW = "videomamba_tiny_f8_224", dict(embed_dim=32, depth=2, num_frames=4)
RELEASED = ["--model", NAME, "--model-kwargs", "embed_dim=32", "depth=2", "num_frames=4", "--img-size", "32"]


def write_video(path, num_frames, value):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 48, 32, "yuv420p"
        rng = np.random.default_rng(value)
        ramp = np.linspace(-60, 60, 48)[None, :, None]  # crops along the width see different levels
        for t in range(num_frames):  # and clips at different times too
            frame = np.clip(rng.normal(value + 10 * t + ramp, 20, (32, 48, 3)), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of tiny videos (two classes), a video model and an image model saved as released, an
    image file, and a 'visionssm train --task video' run on the folder tested with 2 clips x 2 crops."""
    root = tmp_path_factory.mktemp("video_predict")
    for split in ("train", "val"):
        for c, value in (("dark", 70), ("light", 180)):
            (root / "data" / split / c).mkdir(parents=True)
            for i in range(2):
                write_video(root / "data" / split / c / f"{i}.mp4", 9 + 2 * i, value + 7 * i)
    torch.manual_seed(0)
    video = timm.create_model(NAME, img_size=32, num_classes=2, **KW)
    with torch.no_grad():  # a fresh model's class token hardly depends on the clip: scaled until it does
        video.temporal_pos_embedding.normal_()
        for layer in video.layers:
            layer.mixer.in_proj.weight.mul_(5)
            layer.mixer.out_proj.weight.mul_(30)
        video.head.weight.mul_(5)
    torch.save(video.state_dict(), root / "video.pth")  # the released video files' layout: flat
    image = timm.create_model("vim_tiny_patch16_224", embed_dim=32, depth=2, img_size=32, num_classes=10)
    torch.save({"model": image.state_dict(), "args": argparse.Namespace(model="vim")}, root / "image.pth")
    from PIL import Image

    Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(root / "a.png")
    T.train(T.parse_args(T.train_parser(), [
        "--task", "video", "--model", NAME, "--model-kwargs", "embed_dim=32", "depth=2", "--num-frames", "4",
        "--img-size", "32", "--data", str(root / "data"), "--epochs", "1", "-b", "4", "--warmup-epochs", "0",
        "--workers", "0", "--no-progress", "--test-clips", "2", "--test-crops", "2", "--output", str(root / "run")]))
    return root


def expected_scores(model, root, clips, crops):
    """By hand, as the video task's validation set holds the videos: path -> mean softmax of the views."""
    folder = VideoFolder(str(root / "data"), "val", num_frames=4, num_clips=clips)
    transform = VideoTransform(32, False, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, num_crops=crops)
    out = {}
    with torch.no_grad():
        for (path, _), (frames, _) in zip(folder.samples, folder):
            views = transform(frames)
            out[path] = model(views if views.dim() == 5 else views[None]).softmax(-1).mean(0)
    return out


def printed(out: str) -> dict:
    """'path: class p, class p' lines -> {path: {class: p}}."""
    lines = [line.rsplit(": ", 1) for line in out.strip().splitlines()]
    return {path: {c: float(p) for c, p in (item.split() for item in top.split(", "))} for path, top in lines}


def test_predict_gives_the_models_mean_softmax_over_the_views(files, capsys):
    model, info = model_from_checkpoint(str(files / "video.pth"), NAME, KW, img_size=32)
    want = expected_scores(model, files, 2, 3)
    one_view = expected_scores(model, files, 1, 1)
    score = video_scores(model, info["data_config"], torch.device("cpu"), test_clips=2, test_crops=3)
    for path in want:
        assert torch.allclose(score(path), want[path], atol=1e-6)
        assert not torch.allclose(want[path], one_view[path], atol=1e-3)  # the views count
    first = [p[0].item() for p in want.values()]
    assert max(first) - min(first) > 0.01  # the videos' scores differ at the 3 decimals printed

    paths = sorted(want)
    assert cli_main(["predict", *paths, "--checkpoint", str(files / "video.pth"), *RELEASED,
                     "--test-clips", "2", "--test-crops", "3"]) == 0
    got = printed(capsys.readouterr().out)
    assert list(got) == paths
    for path in paths:
        assert list(got[path]) == [str(i) for i in want[path].argsort(descending=True).tolist()]  # best first
        assert got[path] == {str(i): pytest.approx(p, abs=6e-4) for i, p in enumerate(want[path].tolist())}


def test_predict_with_a_runs_checkpoint_uses_its_classes_and_test_views(files, capsys):
    model, info = model_from_checkpoint(str(files / "run" / "last.pth"))
    assert info["data_config"]["test_clips"] == 2 and info["data_config"]["test_crops"] == 2
    want = expected_scores(model, files, 2, 2)
    score = video_scores(model, info["data_config"], torch.device("cpu"))  # no flags: the run's 2 x 2 views
    for path in want:
        assert torch.allclose(score(path), want[path], atol=1e-6)
    path = sorted(want)[0]
    assert cli_main(["predict", path, "--checkpoint", str(files / "run" / "last.pth"), "--topk", "1"]) == 0
    best = want[path].argmax().item()
    assert printed(capsys.readouterr().out) == {path: {["dark", "light"][best]: pytest.approx(
        want[path][best].item(), abs=6e-4)}}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_a_file_of_the_wrong_kind_is_refused_in_one_line(files, capsys):
    png, mp4 = str(files / "a.png"), str(files / "data" / "val" / "dark" / "0.mp4")
    assert cli_main(["predict", png, "--checkpoint", str(files / "video.pth"), *RELEASED]) == 2
    err = one_line_error(capsys)
    assert png in err and "expected a video file" in err and "got an image" in err
    image_model = ["--checkpoint", str(files / "image.pth"), "--model", "vim_tiny_patch16_224",
                   "--model-kwargs", "embed_dim=32", "depth=2", "--img-size", "32"]
    assert cli_main(["predict", mp4, *image_model]) == 2
    err = one_line_error(capsys)
    assert mp4 in err and "expected an image file" in err and "got a video" in err
    assert cli_main(["predict", png, *image_model, "--test-clips", "2"]) == 2
    assert "--test-clips: only for video models" in one_line_error(capsys)
    assert cli_main(["predict", png, *image_model]) == 0  # the image model still reads images


def test_eval_of_a_released_video_file_runs_the_video_task(files, capsys):
    assert cli_main(["eval", "--checkpoint", str(files / "video.pth"), *RELEASED, "--data", str(files / "data"),
                     "--workers", "0", "--test-clips", "2", "--test-crops", "3"]) == 0
    out = capsys.readouterr().out
    assert "(2 clips x 3 crops)" in out
    res = json.loads(out.strip().splitlines()[-1])
    model, _ = model_from_checkpoint(str(files / "video.pth"), NAME, KW, img_size=32)
    want = expected_scores(model, files, 2, 3)
    paths = sorted(want)
    labels = torch.tensor([0 if "/dark/" in p else 1 for p in paths])
    probs = torch.stack([want[p] for p in paths])
    assert res["count"] == 4 and res["img_size"] == 32
    assert res["top1"] == pytest.approx(100 * (probs.argmax(1) == labels).float().mean().item())
    assert res["val_loss"] == pytest.approx(-probs[torch.arange(4), labels].log().mean().item(), rel=1e-5)
