"""--sync-bn: BatchNorm over the global batch of two gloo processes equals BatchNorm over the whole
batch in one process, forward, backward and running statistics."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from visionssm.engine.distributed import CPUSyncBatchNorm, convert_sync_batchnorm


def batch_and_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 5, 4, generator=g) * 2 + 1
    w = torch.randn(6, 3, 5, 4, generator=g)  # the loss weights: sum(w * bn(x))
    return x, w


def one_rank(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    bn = convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm2d(3)), torch.device("cpu"))[0]
    assert isinstance(bn, CPUSyncBatchNorm)
    x, w = batch_and_weights()
    mine = slice(0, 2) if rank == 0 else slice(2, 6)  # unequal shards: the counts must be summed
    xr = x[mine].clone().requires_grad_(True)
    y = bn(xr)
    (w[mine] * y).sum().backward()
    dist.all_reduce(bn.weight.grad)  # as DDP does (summed here: the reference's loss is a sum)
    dist.all_reduce(bn.bias.grad)
    torch.save(dict(y=y.detach(), dx=xr.grad, dw=bn.weight.grad, db=bn.bias.grad, mean=bn.running_mean,
                    var=bn.running_var), os.path.join(out_dir, f"{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_whole_batch_statistics(tmp_path):
    mp.spawn(one_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in (0, 1))
    x, w = batch_and_weights()
    bn = torch.nn.BatchNorm2d(3)
    xs = x.clone().requires_grad_(True)
    y = bn(xs)
    (w * y).sum().backward()
    close = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r0["y"], r1["y"]]), y.detach(), **close)
    torch.testing.assert_close(torch.cat([r0["dx"], r1["dx"]]), xs.grad, **close)
    for r in (r0, r1):
        torch.testing.assert_close(r["dw"], bn.weight.grad, **close)
        torch.testing.assert_close(r["db"], bn.bias.grad, **close)
        torch.testing.assert_close(r["mean"], bn.running_mean, **close)
        torch.testing.assert_close(r["var"], bn.running_var, **close)


def test_conversion_reaches_every_batchnorm_and_keeps_its_state():
    from visionssm.dense.models import build_segmentor

    model = build_segmentor("vmamba_tiny_s1l8", 3, channels=16, backbone_kwargs=dict(dims=8, depths=[1, 1, 1, 1]))
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert bns
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = convert_sync_batchnorm(model.eval(), torch.device("cpu"))
    assert all(isinstance(dict(model.named_modules())[n], CPUSyncBatchNorm) for n in bns)
    assert not model.training and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
