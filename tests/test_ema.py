"""The EMA weights a training run saves: timm's ModelEmaV3 rule applied at every optimizer step.

A run of two optimizer steps writes last.pth after each one (``--checkpoint-steps 1``); the EMA in
each must be ``decay * previous EMA + (1 - decay) * model``, with the decay that
``ModelEmaV3.get_decay(step)`` gives for that step (counted from 1) with the run's warm-up flag.
timm's first update copies the model (its decay is 0 at step 1), so it is the second step that
tells the warm-up flag apart.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from timm.utils import ModelEmaV3  # noqa: E402

from visionssm import train as T  # noqa: E402
from visionssm.engine import checkpoints  # noqa: E402
from visionssm.engine.distributed import seed_everything  # noqa: E402
from visionssm.engine.models import create_model  # noqa: E402

DECAY = 0.9
ARGS = ["--model", "vim_tiny_patch16_224", "--model-kwargs", "embed_dim=16", "depth=1",
        "--data", "digits", "--train-num-samples", "16", "--val-num-samples", "8", "--batch-size", "8",
        "--epochs", "1", "--lr", "3e-3", "--warmup-epochs", "0", "--workers", "0", "--no-progress", "--seed", "5",
        "--model-ema", "--model-ema-decay", str(DECAY), "--checkpoint-steps", "1"]


def floats(state_dict):
    return {k: v.clone() for k, v in state_dict.items() if v.is_floating_point()}


def run_two_steps(out, monkeypatch, *extra):
    """(initial weights, [(model, EMA) saved after step 1, after step 2]) of a run through ``main``."""
    saved = {}  # step -> (model, EMA) as written; every checkpoint of one step holds the same weights
    real = checkpoints.save_checkpoint

    def save(state, path):
        real(state, path)
        saved[state["step"]] = floats(state["model"]), floats(state["model_ema"])

    monkeypatch.setattr(checkpoints, "save_checkpoint", save)
    argv = [*ARGS, "--output", str(out), *extra]
    assert T.main(argv) == 0
    assert sorted(saved) == [1, 2]
    # the weights the run started from: train() seeds, then builds the model (ClassificationTask)
    args = T.parse_args(T.train_parser(), argv)
    ckpt = checkpoints.load_checkpoint(str(out / "last.pth"))
    seed_everything(args.seed)
    model = create_model(args.model, len(ckpt["classes"]), ckpt["data_config"]["img_size"], args.model_kwargs,
                           args.drop, args.drop_path, args.pretrained_path)
    return floats(model.state_dict()), [saved[1], saved[2]]


def assert_ema(ema, previous, model, decay, what):
    assert ema.keys() == model.keys() == previous.keys()
    for k in ema:
        want = decay * previous[k] + (1 - decay) * model[k]
        torch.testing.assert_close(ema[k], want, rtol=1e-6, atol=1e-7, msg=lambda m, k=k: f"{what}, {k}: {m}")


@pytest.mark.parametrize("warmup", [False, True], ids=["no_warmup", "warmup"])
def test_saved_ema_follows_timm_decay_per_step(tmp_path, monkeypatch, warmup):
    initial, [(w1, ema1), (w2, ema2)] = run_two_steps(tmp_path / "run", monkeypatch,
                                                      *(["--model-ema-warmup"] if warmup else []))
    rule = ModelEmaV3(torch.nn.Linear(1, 1), decay=DECAY, use_warmup=warmup)
    d1, d2 = rule.get_decay(1), rule.get_decay(2)
    # both steps changed the weights (no lr warm-up from 0 makes a step a no-op)
    for before, after in ((initial, w1), (w1, w2)):
        assert max((after[k] - before[k]).abs().max().item() for k in after) > 1e-4
    assert_ema(ema1, initial, w1, d1, "after step 1")
    assert_ema(ema2, ema1, w2, d2, "after step 2")
    # the second step's decay is what tells the flag apart (the first update copies the model either way)
    no_warmup_ema2 = {k: DECAY * ema1[k] + (1 - DECAY) * w2[k] for k in w2}
    assert (max((ema2[k] - no_warmup_ema2[k]).abs().max().item() for k in w2) > 1e-4) == warmup
