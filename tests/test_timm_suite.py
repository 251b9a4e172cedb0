"""What timm's own model tests (``tests/test_models.py`` of the timm sdist) ask of every model, kept here
for every registered variant at tiny sizes: ``reset_classifier`` keeps the model's device, dtype and
train/eval mode, and FX symbolic tracing (timm's feature extraction) gives the eager output.
``docs/timm_model_suite.md`` runs timm's suite itself against these models.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
from timm.models import create_feature_extractor, get_graph_node_names  # noqa: E402

import visionssm  # noqa: E402, F401

VMAMBA = sorted(timm.list_models("vmamba_*"))
VIM = sorted(timm.list_models("vim_*"))
TINY = {
    "vmamba": dict(dims=8, depths=[1, 1, 1, 1], num_classes=10, scan_backend="reference"),
    "vim": dict(embed_dim=32, depth=2, img_size=32, num_classes=10, scan_backend="reference"),
}


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return timm.create_model(name, **{**TINY[name.split("_")[0]], **kwargs})


# torchvision notes that the eval graph is a subsequence of the train graph (dropout, drop path)
pytestmark = pytest.mark.filterwarnings("ignore:NOTE. The nodes obtained by tracing:UserWarning")


def test_every_variant_is_covered():
    assert len(VMAMBA) == 9 and len(VIM) == 5


@pytest.mark.parametrize("name", VMAMBA + VIM)
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    model = tiny(name).eval().to(torch.float64)
    for num_classes, pool in ((0, None), (2, None), (3, "avg")):
        model.reset_classifier(num_classes, pool)
        head = model.get_classifier()
        assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in head.parameters())
        assert not any(m.training for m in model.modules()), "a module of the new head is in training mode"
    assert model(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)
    model.train()
    model.reset_classifier(4)
    assert all(m.training for m in model.modules())
    model.eval().to("meta")
    model.reset_classifier(5)
    assert all(p.is_meta and p.dtype == torch.float64 for p in model.get_classifier().parameters())
    assert not any(m.training for m in model.modules())


def traced(model):
    """timm's FX feature extraction of the model's output node (leaf modules and wrapped functions
    from timm's registry, as timm's tests trace)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    last = train_nodes[-1] if model.training else eval_nodes[-1]
    return create_feature_extractor(model, [last]), last


@pytest.mark.parametrize("name", VMAMBA + VIM)
def test_fx_trace_equals_eager(name):
    model = tiny(name).eval()
    fx_model, node = traced(model)
    # one graph for every input size: the shape-dependent steps (padding, position resampling)
    # run at call time, they are not baked in at the traced size
    for size in ((32, 32), (36, 44)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert torch.equal(fx_model(x)[node], model(x)), size


@pytest.mark.parametrize("name", ["vmamba_vanilla_tiny", "vmamba_tiny_s1l8", "vim_tiny_patch16_224"])
def test_fx_trace_backward_reaches_every_parameter(name):
    model = tiny(name).train()
    fx_model, node = traced(model)
    fx_model(torch.randn(2, 3, 36, 44))[node].mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())
