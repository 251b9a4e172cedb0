"""visionssm erf: the map of a CNN peaks at the centre; the command writes a PNG grid of the expected size."""

import numpy as np
import pytest
import torch
import torch.nn as nn

from visionssm.analysis.erf import area_ratio, erf_map, last_feature_map, normalise
from visionssm.cli import main


class TinyCNN(nn.Module):
    """Stride-1 3x3 convs: the centre output position sits exactly over the centre pixel."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(*[m for _ in range(4) for m in (nn.Conv2d(3 if _ == 0 else 8, 8, 3, padding=1),
                                                                  nn.ReLU())])

    def forward_features(self, x):
        return self.body(x)


def _peak(erf):
    smooth = torch.nn.functional.avg_pool2d(torch.from_numpy(erf)[None, None], 5, 1, 2)[0, 0].numpy()
    return np.unravel_index(smooth.argmax(), smooth.shape)


def test_cnn_erf_peaks_at_the_centre_and_is_local():
    torch.manual_seed(0)
    erf, used = erf_map(TinyCNN(), torch.randn(3, 3, 33, 33), batch_size=2)
    assert used == 3 and erf.shape == (33, 33)
    assert _peak(erf) == (16, 16)
    # four 3x3 convs see 9x9 pixels: nothing outside that window
    outside = erf.copy()
    outside[12:21, 12:21] = 0
    assert outside.max() == 0 and erf[12:21, 12:21].max() > 0
    assert area_ratio(erf, 0.99) <= (10 / 33) ** 2
    n = normalise(erf)
    assert n.max() == pytest.approx(1.0) and n.min() >= 0


def test_timm_resnet_erf_is_centred():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", zero_init_last=False, num_classes=0)
    erf, _ = erf_map(model, torch.randn(2, 3, 160, 160), batch_size=2)
    # stride-2 convs put the centre feature's field a few pixels up-left of the image centre
    assert all(abs(int(c) - 80) <= 20 for c in _peak(erf))
    corners = max(erf[:16, :16].mean(), erf[-16:, -16:].mean(), erf[:16, -16:].mean(), erf[-16:, :16].mean())
    assert erf[50:80, 50:80].mean() > 3 * corners


def test_last_feature_map_of_token_and_channels_last_models():
    timm = pytest.importorskip("timm")
    import visionssm  # noqa: F401

    x = torch.randn(1, 3, 64, 96)
    vim = timm.create_model("vim_tiny_patch16_224", depth=2, embed_dim=32, img_size=(64, 96))
    assert last_feature_map(vim, x).shape == (1, 32, 4, 6)
    vmamba = timm.create_model("vmamba_tiny_s1l8", depths=(1, 1, 1, 1), dims=8)
    assert last_feature_map(vmamba, x).shape == (1, 64, 2, 3)


def test_erf_command_writes_a_png_grid_of_the_expected_size(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    out = tmp_path / "erf.png"
    assert main(["erf", "--models", "resnet18", "vim_tiny_patch16_224", "--images", str(images), "--size", "32",
                 "--out", str(out)]) == 0
    with Image.open(out) as img:
        assert img.size == (2 * 320, 320 + 40)  # two panels of 320 px, a 40 px title band
    maps = np.load(tmp_path / "erf.npz")
    assert [m.shape for m in maps.values()] == [(32, 32), (32, 32)]
    assert "2 images at 32x32" in capsys.readouterr().out
    # a random model is seeded: the same maps again, other maps with another seed
    again = tmp_path / "again.png"
    for seed, same in (("0", True), ("1", False)):
        assert main(["erf", "--models", "resnet18", "vim_tiny_patch16_224", "--images", str(images), "--size", "32",
                     "--seed", seed, "--out", str(again)]) == 0
        assert all(np.array_equal(a, b) for a, b in zip(maps.values(), np.load(tmp_path / "again.npz").values())) \
            == same


def test_erf_command_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["erf", "--models", "no_such_model", "--images", str(tmp_path)])
    assert "unknown model(s) ['no_such_model']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["erf", "--models", "resnet18", "--images", str(tmp_path)])
    assert "no image files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["erf", "--models", "resnet18", "resnet18", "--checkpoint", "-", "--images", str(tmp_path)])
    assert "--checkpoint: expected one per model (2" in capsys.readouterr().err


def test_erf_command_loads_a_training_checkpoint_with_its_head_kwargs_and_normalisation(tmp_path, capsys):
    """A checkpoint of ``visionssm train`` (2 classes, a reduced Vim, trained at 32 px with mean/std 0.5) is
    rebuilt as it was trained: not a 1000-class default model that the file's head does not fit."""
    pytest.importorskip("matplotlib")
    timm = pytest.importorskip("timm")
    from PIL import Image

    from visionssm.analysis.erf import load_images

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depth=2)
    model = timm.create_model("vim_tiny_patch16_224", num_classes=2, img_size=32, **kwargs)
    data_config = dict(img_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="nearest", crop_pct=1.0)
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    torch.save(dict(model=model.state_dict(), config=dict(model="vim_tiny_patch16_224", model_kwargs=kwargs),
                    classes=["disconnected", "connected"], data_config=data_config, epoch=0), ckpt)

    out = tmp_path / "erf.png"
    assert main(["erf", "--models", "vim_tiny_patch16_224", "--checkpoint", str(ckpt), "--images", str(images),
                 "--size", "48", "--out", str(out)]) == 0
    assert "vim_tiny_patch16_224 (run/best.pth)" in capsys.readouterr().out
    model.set_input_size(img_size=48)
    want, _ = erf_map(model, load_images(sorted(images.iterdir()), 48, (0.5,) * 3, (0.5,) * 3))
    np.testing.assert_allclose(np.load(tmp_path / "erf.npz")["0_vim_tiny_patch16_224"], want, rtol=1e-5, atol=1e-12)

    with pytest.raises(SystemExit) as e:  # another model's checkpoint: one line, not a traceback
        main(["erf", "--models", "resnet18", "--checkpoint", str(ckpt), "--images", str(images), "--size", "48",
              "--out", str(out)])
    assert e.value.code == 2 and "do not fit --model resnet18" in capsys.readouterr().err
