"""One case of the models benchmark: a model, given as 'NAME[:key=value...]', at one resolution.

:func:`measure_case` runs in a fresh process (:func:`visionssm.bench.isolated.run_isolated`): it
builds the model, records its size and MACs, times the step (inference, or forward + backward +
AdamW with ``train``) and hands the step back for the runner to measure its peak memory, after the
timed calls, so the weights, the input and the optimizer's state are resident before it.
"""

from __future__ import annotations

import gc

import torch

from visionssm.bench.flops import count_macs
from visionssm.bench.isolated import is_oom
from visionssm.bench.measure import best_time
from visionssm.engine import models as engine

# timm models that are vision SSMs too (EfficientViM's hidden-state-mixer SSD)
SSM_PEERS = ("efficientvim_",)


def parse_model(text: str) -> tuple[str, dict]:
    """'NAME' or 'NAME:key=value:key=value' (values as Python literals, as in ``--model-kwargs``)
    -> (name, create kwargs).

    E.g. ``vim_tiny_patch16_224:depth=12`` or ``vmamba_tiny_s1l8:depths=(2,2,4,2)``.
    """
    name, *pairs = text.split(":")
    try:
        return name, engine.parse_model_kwargs(pairs, "--models")
    except ValueError:
        raise ValueError(f"--models: expected NAME or NAME:key=value[:key=value...], got {text!r}") from None


def create_model(model: str, size: tuple[int, int] | None = None, attention: str = "-"):
    """The model 'NAME[:key=value...]' (random init), at ``size`` where the model takes an img_size,
    with attention in mode 'sdpa' or 'explicit' ('-': as built)."""
    name, kwargs = parse_model(model)
    net = engine.create_model(name, img_size=size, model_kwargs=kwargs)
    if attention != "-":
        for m in net.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = attention == "sdpa"
    return net


def model_kind(model: str) -> str:
    """'ssm' (this library's models and timm's vision SSMs), 'attention' (has a fused_attn switch) or 'other'."""
    import visionssm

    name = parse_model(model)[0]
    if name in visionssm.list_models() or name.startswith(SSM_PEERS):
        return "ssm"
    try:
        with torch.device("meta"):  # nothing allocated
            net = create_model(model)
    except Exception:
        return "other"
    return "attention" if any(hasattr(m, "fused_attn") for m in net.modules()) else "other"


def _make_step(model, x, train: bool, device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if not train:
        def step():
            with torch.no_grad():
                model(x)
            sync()
        return step
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    target = torch.randint(0, max(getattr(model, "num_classes", 1), 1), (x.shape[0],), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = (torch.nn.functional.cross_entropy(out.float(), target) if out.dim() == 2
                else out.float().square().mean())
        loss.backward()
        opt.step()
        sync()
    return step


def measure_case(child, model: str, attention: str, height: int, width: int, batch_size: int, train: bool,
                 device: str, budget_s: float):
    """Run in the case's own process: emit params_m, weights_mb, gmacs (step_gmacs), latency_ms and
    images_per_s; return the step whose peak memory the runner measures (None when it cannot be built)."""
    device = torch.device(device)
    size = (height, width)
    try:
        net = create_model(model, size, attention)
    except Exception as e:
        child.emit(status="oom" if is_oom(e) else "unsupported", note=f"{type(e).__name__}: {e}"[:300])
        return None
    child.emit(params_m=sum(p.numel() for p in net.parameters()) / 1e6,
               weights_mb=sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers())) / 2**20)
    try:
        child.emit(gmacs=count_macs(net, size) / 1e9)
        if train:
            child.emit(step_gmacs=count_macs(net, size, backward=True) / 1e9)
    except Exception as e:  # the measurement still runs
        child.emit(note=f"MACs not counted ({type(e).__name__}: {e})"[:300])
    gc.collect()
    net.to(device).train(train)
    x = torch.randn(batch_size, getattr(net, "in_chans", 3), *size, device=device)
    step = _make_step(net, x, train, device)
    child.cap_memory()
    # the first call (best_time's warm-up) pays one-time costs: lazy initialisation, caches
    t = best_time(step, budget_s=budget_s, min_reps=1, max_reps=10)
    child.emit(latency_ms=1e3 * t, images_per_s=batch_size / t)
    return step
