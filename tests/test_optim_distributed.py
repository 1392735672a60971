"""Distributed use of amm.optim with 2 CPU processes (gloo): DDP needs no extra communication,
and sharded parameters (ZeRO/FSDP style) complete the sums with one all-reduce."""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from amm.optim import AMSGD, AMAdamW

WORLD = 2
# two processes per test (spawn, gloo): seconds each; `make test` runs them
pytestmark = pytest.mark.slow


def _init(rank: int, store: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _finish() -> None:
    """Both ranks passed their checks: leave together, and at once. Under load, a worker's
    interpreter teardown after the gloo group was destroyed has aborted ("terminate called
    without an active exception", SIGABRT) although the test had passed; os._exit skips it."""
    dist.barrier()  # both ranks done before teardown (gloo aborts if a peer vanishes)
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _elementwise_loss(params, coeffs):
    """Separable, so a shard's gradient depends on that shard alone."""
    return sum(
        (a * p**2 / 2 + c * p + 0.1 * torch.sin(3 * p)).sum() for p, (a, c) in zip(params, coeffs)
    )


def _problem():
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 4), (10,), (4, 3)]
    full = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    coeffs = [
        (
            torch.rand(s, generator=gen, dtype=torch.float64) + 0.5,
            torch.randn(s, generator=gen, dtype=torch.float64),
        )
        for s in shapes
    ]
    return full, coeffs


def _train(params, coeffs, opt, steps, sharded=False):
    """`opt.step(closure)`; the closure's loss is the global one (summed over the shards)."""
    betas = []

    def closure():
        opt.zero_grad()
        loss = _elementwise_loss(params, coeffs)
        loss.backward()
        loss = loss.detach().clone()
        if sharded:
            dist.all_reduce(loss)
        return loss

    for _ in range(steps):
        opt.step(closure)
        betas.append(opt.last_beta.clone() if opt.last_beta is not None else None)
    return betas


def _sharded_worker(rank: int, store: str, cls_name: str, scope: str, fused: bool) -> None:
    _init(rank, store)
    cls = {"AMSGD": AMSGD, "AMAdamW": AMAdamW}[cls_name]
    kwargs = dict(lr=0.3, beta_scope=scope, fused=fused)
    if scope == "exact":  # the exact bias with coupled decay: the norms are all-reduced
        kwargs = dict(lr=0.3, plane_bias="exact", weight_decay=0.05, fused=fused)
    elif scope in FORMULATIONS:  # AM-AdamW's other formulations (the default: bounded, M = P^2)
        correction, metric = FORMULATIONS[scope]
        kwargs = dict(lr=0.3, bias_correction=correction, lam_metric=metric, fused=fused)
    full, coeffs = _problem()
    tol = 1e-10
    if fused:  # fp32 only (Triton), and the shards' partial sums add up in another order
        full = [t.float() for t in full]
        coeffs = [(a.float(), c.float()) for a, c in coeffs]
        tol = 1e-5
    # reference: the unsharded optimizer on the full tensors
    ref = [nn.Parameter(t.clone()) for t in full]
    ref_betas = _train(ref, coeffs, cls(ref, **kwargs), 12)
    # this rank's shard (rows split along dim 0, like FSDP2's Shard(0))
    shards = [nn.Parameter(t.chunk(WORLD)[rank].clone()) for t in full]
    shard_coeffs = [(a.chunk(WORLD)[rank], c.chunk(WORLD)[rank]) for a, c in coeffs]
    opt = cls(shards, process_group=dist.group.WORLD, **kwargs)
    betas = _train(shards, shard_coeffs, opt, 12, sharded=True)
    for b, rb in zip(betas[1:], ref_betas[1:]):
        torch.testing.assert_close(b, rb, rtol=0, atol=tol)
    assert len({round(float(b.flatten()[0]), 5) for b in betas[1:]}) > 2, "beta must vary"
    for shard, whole in zip(shards, ref):
        torch.testing.assert_close(
            shard.detach(), whole.detach().chunk(WORLD)[rank], rtol=tol, atol=tol
        )
    _finish()


def _ddp_worker(rank: int, store: str, cls_name: str) -> None:
    _init(rank, store)
    cls = {"AMSGD": AMSGD, "AMAdamW": AMAdamW}[cls_name]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    single = copy.deepcopy(model)
    ddp = nn.parallel.DistributedDataParallel(model)
    o_ddp, o_single = cls(ddp.parameters(), lr=0.05), cls(single.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        x, y = torch.randn(8, 5, generator=gen), torch.randn(8, 1, generator=gen)
        o_single.zero_grad()
        nn.functional.mse_loss(single(x), y).backward()
        o_single.step()
        o_ddp.zero_grad()
        part = slice(rank * 4, rank * 4 + 4)  # each rank half of the global batch
        nn.functional.mse_loss(ddp(x[part]), y[part]).backward()
        o_ddp.step()
    for p, q in zip(model.parameters(), single.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    torch.testing.assert_close(o_ddp.last_beta, o_single.last_beta, rtol=0, atol=1e-6)
    _finish()


FORMULATIONS = {
    "bounded-scalar": ("bounded", "scalar"),
    "exact-preconditioned": ("exact", "preconditioned"),
    "exact-scalar": ("exact", "scalar"),
}


@pytest.mark.parametrize("scope", ["global", "per-tensor", "exact"])
@pytest.mark.parametrize("cls_name", ["AMSGD", "AMAdamW"])
def test_sharded_equals_unsharded(tmp_path, cls_name, scope):
    mp.spawn(_sharded_worker, args=(str(tmp_path / "store"), cls_name, scope, False), nprocs=WORLD)


@pytest.mark.parametrize("formulation", sorted(FORMULATIONS))
def test_sharded_am_adamw_formulations_equal_unsharded(tmp_path, formulation):
    store = str(tmp_path / "store")
    mp.spawn(_sharded_worker, args=(store, "AMAdamW", formulation, False), nprocs=WORLD)


@pytest.mark.parametrize("cls_name", ["AMSGD", "AMAdamW"])
def test_sharded_fused_equals_unsharded_fused(tmp_path, cls_name):
    """The fused passes on shards: partial rows, then the same one all-reduce (on CPU the
    kernels run in Triton's interpreter, see tests/conftest.py)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("CPU shards need Triton's interpreter, which is set only without a GPU")
    store = str(tmp_path / "store")
    mp.spawn(_sharded_worker, args=(store, cls_name, "global", True), nprocs=WORLD)


@pytest.mark.parametrize("cls_name", ["AMSGD", "AMAdamW"])
def test_ddp_equals_single_process(tmp_path, cls_name):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "store"), cls_name), nprocs=WORLD)
