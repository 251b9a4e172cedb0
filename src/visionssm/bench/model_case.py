"""One case of the models benchmark: a model, given as 'NAME[:key=value...]', at one resolution.

It runs in two processes of its own (:mod:`visionssm.bench.isolated`): :func:`measure_case` in a
fresh process builds the model, records its size and MACs, warms the step up (inference, or forward
+ backward + AdamW with ``train``) and hands it back for the runner to measure its peak memory, so
the weights, the input and the optimizer's state are resident before it; :func:`time_case` in a
process kept alive builds and warms up the same step and hands it back for the timing rounds.
"""

from __future__ import annotations

import gc

import torch

from visionssm.bench.flops import count_macs
from visionssm.bench.isolated import is_oom
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
    return set_attention(engine.create_model(name, img_size=size, model_kwargs=kwargs), attention)


def set_attention(net, attention: str = "-"):
    """``net`` with its timm attention modules (those with a ``fused_attn`` switch) in mode 'sdpa'
    (PyTorch's fused kernel) or 'explicit' (the attention matrix materialised); '-': as built."""
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


def setup_step(child, build, size: tuple[int, ...], batch_size: int, train: bool, device: str, count: bool):
    """Build the case's model with ``build()``, emit its size (and, with ``count``, its MACs for one
    input of ``size``: (height, width), or (frames, height, width) for a clip), make its step and
    warm it up; the step, or None when it cannot be built (its ``status`` emitted)."""
    device = torch.device(device)
    try:
        net = build()
    except Exception as e:
        child.emit(status="oom" if is_oom(e) else "unsupported", note=f"{type(e).__name__}: {e}"[:300])
        return None
    if count:
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
    step()  # the warm-up pays one-time costs: lazy initialisation, caches
    return step


def measure_case(child, model: str, attention: str, height: int, width: int, batch_size: int, train: bool,
                 device: str):
    """Run in the case's fresh process: emit params_m, weights_mb and gmacs (step_gmacs); return the
    warmed-up step whose peak memory the runner measures (None when it cannot be built)."""
    return setup_step(child, lambda: create_model(model, (height, width), attention), (height, width),
                      batch_size, train, device, count=True)


def time_case(child, model: str, attention: str, height: int, width: int, batch_size: int, train: bool,
              device: str):
    """Run in the case's process kept alive for the timing rounds: the warmed-up step (None when it
    cannot be built)."""
    return setup_step(child, lambda: create_model(model, (height, width), attention), (height, width),
                      batch_size, train, device, count=False)
