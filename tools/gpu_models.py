"""Model-level checks and timings of the Triton scan on a CUDA device (run by tools/gpu_check.sh).

1. Vim-Ti and VMamba-T[s1l8], the same weights with scan_backend "triton" and "torch": logits and
   every parameter gradient agree, and "auto" picks "triton" on CUDA.
2. Training steps with bf16 autocast and the Triton scan on one fixed batch: the loss falls.
3. Throughput of the four tiny models (and the Vim/DeiT pair at 1024): inference images/s, training
   images/s (forward + backward + AdamW) and peak memory, all in this run.

    python3 tools/gpu_models.py [--out DIR]
"""

import argparse
import contextlib
import json
import sys
from pathlib import Path

import timm
import torch

import visionssm  # noqa: F401  (registers the models)
from visionssm.bench.machine import describe
from visionssm.bench.scan_gpu import max_rel_err, time_ms
from visionssm.ops.selective_scan import resolve_backend

SSMS = ("vim_tiny_patch16_224", "vmamba_tiny_s1l8")
SPEED = [(m, 224, 64) for m in (*SSMS, "deit_tiny_patch16_224", "convnext_tiny")]
SPEED += [(m, 1024, 4) for m in ("vim_tiny_patch16_224", "deit_tiny_patch16_224")]


def compare_backends(name, dev):
    torch.manual_seed(0)
    models = {be: timm.create_model(name, scan_backend=be, drop_path_rate=0.0).to(dev) for be in ("triton", "torch")}
    models["torch"].load_state_dict(models["triton"].state_dict())
    x = torch.randn(4, 3, 224, 224, device=dev)
    out = {}
    for be, m in models.items():
        logits = m(x)
        logits.square().mean().backward()
        out[be] = (logits.detach(), {k: p.grad for k, p in m.named_parameters() if p.grad is not None})
    (l1, g1), (l0, g0) = out["triton"], out["torch"]
    worst = max(g0, key=lambda k: max_rel_err(g1[k], g0[k]))
    return dict(model=name, logits_rel_err=max_rel_err(l1, l0), grads=len(g0),
                same_grad_keys=g1.keys() == g0.keys(), worst_grad=worst,
                worst_grad_rel_err=max_rel_err(g1[worst], g0[worst]))


def train_steps(name, dev, steps=30):
    torch.manual_seed(0)
    m = timm.create_model(name, num_classes=10, drop_path_rate=0.0).to(dev)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x, y = torch.randn(16, 3, 224, 224, device=dev), torch.randint(0, 10, (16,), device=dev)
    losses = []
    for _ in range(steps):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return dict(model=name, first_loss=losses[0], last_loss=losses[-1], finite=all(map(lambda v: v == v, losses)))


def throughput(name, res, batch, dev, amp):
    kw = dict(img_size=res) if name.startswith(("vim", "deit")) else {}  # the others take any size as built
    m = timm.create_model(name, **kw).to(dev)
    x = torch.randn(batch, 3, res, res, device=dev)
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext
    m.eval()

    def infer():
        with torch.no_grad(), ctx():
            m(x)
    torch.cuda.reset_peak_memory_stats()
    t_inf = time_ms(infer, 1000, 10) / 1e3
    mem_inf = torch.cuda.max_memory_allocated() / 2**20
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)

    def step():
        with ctx():
            loss = m(x).float().logsumexp(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.reset_peak_memory_stats()
    t_train = time_ms(step, 1000, 5) / 1e3
    mem_train = torch.cuda.max_memory_allocated() / 2**20
    return dict(model=name, res=res, batch=batch, amp=amp, infer_img_s=batch / t_inf, train_img_s=batch / t_train,
                infer_peak_mib=mem_inf, train_peak_mib=mem_train)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench-out/gpu-models")
    p.add_argument("--no-speed", action="store_true", help="only the checks, no throughput")
    args = p.parse_args()
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 comparisons
    res = dict(machine=describe("cuda"), auto_backend=resolve_backend("auto", dev), compare=[], train=[], speed=[])
    print(res["machine"], "| auto backend on cuda:", res["auto_backend"], flush=True)
    steps = [("compare", compare_backends, (name, dev)) for name in SSMS]
    steps += [("train", train_steps, (name, dev)) for name in SSMS]
    steps += [("speed", throughput, (name, r, b, dev, amp)) for name, r, b in SPEED for amp in (False, True)
              if not args.no_speed]
    for key, fn, fn_args in steps:
        if key == "speed":
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            res[key].append(fn(*fn_args))
        except Exception as e:  # an OOM or a failure in one step is recorded, the others still run
            res[key].append(dict(args=[str(a) for a in fn_args], error=f"{type(e).__name__}: {e}"))
        print(key, res[key][-1], flush=True)
        torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_models.json").write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
