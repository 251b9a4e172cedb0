"""Every command that takes a weights file reads it through the one checkpoint reader and builds the
model with the file's own head: a training checkpoint of ours, and files laid out as the official
Vim and VMamba releases are ({'model': ..., 'args': Namespace} / {'model': ..., 'epoch': ...}), and a
DeepSpeed/DDP-wrapped one ({'module': {'module.<key>': ...}})."""

import argparse
import json

import pytest
import torch

from visionssm import export, train
from visionssm.cli import main as cli_main
from visionssm.engine.models import create_model, model_from_checkpoint
from visionssm.engine.task import create_task

VIM, VIM_KW = "vim_tiny_patch16_224", {"embed_dim": 32, "depth": 2}
VMAMBA, VMAMBA_KW = "vmamba_tiny_s1l8", {"dims": 8, "depths": [1, 1, 1, 1]}
SOURCES = ["ours", "official_vim", "official_vmamba", "wrapped"]


def kwargs_flags(kwargs: dict) -> list[str]:
    return ["--model-kwargs", *(f"{k}={v!r}".replace(" ", "") for k, v in kwargs.items())]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """source -> (path, model name, model kwargs, the weights the file holds)."""
    root = tmp_path_factory.mktemp("ckpts")
    train.train(train.parse_args(train.train_parser(), [
        "--model", VIM, *kwargs_flags(VIM_KW), "--data", "digits", "--train-num-samples", "64",
        "--val-num-samples", "16", "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
        "--no-progress", "--output", str(root / "ours")]))
    ours = root / "ours" / "last.pth"
    torch.manual_seed(0)
    vim = create_model(VIM, 10, 32, VIM_KW).state_dict()
    torch.save({"model": vim, "args": argparse.Namespace(model=VIM, lr=5e-4)}, root / "vim.pth")
    vmamba = create_model(VMAMBA, 10, None, VMAMBA_KW).state_dict()
    torch.save({"model": vmamba, "epoch": 299, "max_accuracy": 80.5}, root / "vmamba.pth")
    # saved from a DistributedDataParallel-wrapped model by DeepSpeed: {'module': {'module.<key>': ...}}
    torch.save({"module": {f"module.{k}": v for k, v in vmamba.items()}}, root / "wrapped.pth")
    return {"ours": (ours, VIM, {}, torch.load(ours, weights_only=True)["model"]),
            "wrapped": (root / "wrapped.pth", VMAMBA, VMAMBA_KW, vmamba),
            "official_vim": (root / "vim.pth", VIM, VIM_KW, vim),
            "official_vmamba": (root / "vmamba.pth", VMAMBA, VMAMBA_KW, vmamba)}


def flags(source, files) -> list[str]:
    path, name, kwargs, _ = files[source]
    return ["--checkpoint", str(path)] + ([] if source == "ours" else ["--model", name, *kwargs_flags(kwargs)])


def same_weights(model, weights) -> list[str]:
    return [k for k, v in model.state_dict().items() if not torch.equal(v, weights[k])]


@pytest.mark.parametrize("source", SOURCES)
def test_the_model_is_built_with_every_weight_of_the_file(files, source):
    path, name, kwargs, weights = files[source]
    model, info = model_from_checkpoint(str(path), None if source == "ours" else name, kwargs, img_size=32)
    assert model.num_classes == 10 and same_weights(model, weights) == []
    assert info["classes"] == [str(i) for i in range(10)]


@pytest.mark.parametrize("source", SOURCES)
def test_eval_and_predict(files, source, tmp_path, capsys):
    assert cli_main(["eval", *flags(source, files), "--data", "digits", "--num-samples", "16", "--img-size", "32",
                     "--workers", "0"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["count"] == 16 and res["img_size"] == 32

    from visionssm.data import Digits

    Digits("val")[0][0].save(tmp_path / "d.png")
    assert cli_main(["predict", str(tmp_path / "d.png"), *flags(source, files), "--img-size", "32",
                     "--topk", "20"]) == 0
    assert len(capsys.readouterr().out.split(": ", 1)[1].split(", ")) == 10  # the file's ten classes


@pytest.mark.parametrize("source", SOURCES)
def test_export_builds_the_files_model(files, source):
    path, name, kwargs, weights = files[source]
    model = export.create(name, str(path), **kwargs)
    assert model.num_classes == 10
    shared = {k for k in weights if k in model.state_dict() and model.state_dict()[k].shape == weights[k].shape}
    # an official Vim file is built at its model's 224 px (pos_embed resampled); ours at its trained size
    assert len(shared) == len(weights) - (source == "official_vim")
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in shared)


@pytest.mark.parametrize("source", SOURCES)
def test_pretrained_path_starts_from_the_files_weights(files, source):
    path, name, kwargs, weights = files[source]
    args = train.parse_args(train.train_parser(), [
        "--model", name, *kwargs_flags(kwargs or VIM_KW), "--data", "digits", "--img-size", "32",
        "--train-num-samples", "8", "--val-num-samples", "8", "--pretrained-path", str(path)])
    task = create_task(args)
    assert same_weights(task.model, weights) == []
