"""camegrad_kernels.distributed on real process groups (gloo on CPU; NCCL with >= 2 GPUs).

Spawning ranks costs seconds, so each world size is spawned once: every rank
runs all the scenarios below in order and records a traceback per scenario;
each pytest case then checks one scenario's record on all ranks. A collective
that hangs fails through the group's short timeout instead.
"""

from __future__ import annotations

import pytest
import ranks
import torch
import torch.distributed as dist

from camegrad_kernels import camegrad_step
from camegrad_kernels.distributed import (
    _reduce_scatter_columns,
    _split,
    average_task_grads,
    gather_update,
    shard_task_grads,
    step_sharded,
)

# The kernel backend: the same one on every rank and in the single-process check.
BACKEND = "torch"
SCENARIOS = {}


def scenario(fn):
    SCENARIOS[fn.__name__] = fn
    return fn


def _grads(n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Seeded on the CPU: the same seed gives the same G on every rank."""
    g = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return g.to(device=device, dtype=dtype)


def _sharded_matches(device, dtype, n, sizes, tol, **kw):
    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = sizes[:world]
    full = _grads(n, sum(sizes), dtype, device)
    lo = sum(sizes[:rank])
    shard = full[:, lo : lo + sizes[rank]].contiguous()
    out, info = step_sharded(shard, return_info=True, backend=BACKEND, **kw)
    ref, ref_info = camegrad_step(full, return_info=True, backend=BACKEND, **kw)
    assert out.shape == (sizes[rank],) and out.dtype == dtype
    err = (out - ref[lo : lo + sizes[rank]]).norm() / ref.norm()
    assert err <= tol, f"relative error {err:.3g} > {tol}"
    # The all-reduced Gram is float64 for every dtype (an empty shard's zeros too).
    assert info.gram.dtype == ref_info.gram.dtype == torch.float64
    torch.testing.assert_close(
        info.gram, ref_info.gram, rtol=tol, atol=tol * ref_info.gram.abs().max()
    )
    # Bitwise identical alpha and coefficients (the Gram's float64) on every rank.
    assert info.alpha.dtype == info.coeffs.dtype == torch.float64
    bits = torch.cat([info.alpha, info.coeffs]).view(torch.int64)
    every = [torch.empty_like(bits) for _ in range(world)]
    dist.all_gather(every, bits)
    assert all(torch.equal(b, every[0]) for b in every), "alpha/coeffs bits differ across ranks"


@scenario
def sharded_dynamic_range(device):
    """Norms 1e7 apart, fp32: the sharded step equals the float64 answer on the rounded input."""
    from camegrad_kernels import methods, reference

    rank, world = dist.get_rank(), dist.get_world_size()
    sizes = [40, 37, 31][:world]
    full = _grads(4, sum(sizes), torch.float64, device, seed=7)
    norms = torch.tensor([1.0, 1e-7, 1e-3, 1e-5], dtype=torch.float64, device=device)
    full = (full / full.norm(dim=1, keepdim=True) * norms[:, None]).float()
    lo = sum(sizes[:rank])
    shard = full[:, lo : lo + sizes[rank]].contiguous()
    g64 = full.double()
    out = step_sharded(shard, backend=BACKEND)
    want = reference.camegrad_step(g64)[lo : lo + sizes[rank]]
    assert (out.double() - want).norm() <= 1e-4 * want.norm()
    out = step_sharded(shard, backend=BACKEND, method="cagrad")
    _, c, _, _ = methods.cagrad_coefficients(g64 @ g64.T, torch.ones(4, dtype=torch.float64), 0.5)
    want = (c @ g64)[lo : lo + sizes[rank]]
    assert (out.double() - want).norm() <= 1e-4 * want.norm()


@scenario
def sharded_fp32_even(device):
    _sharded_matches(device, torch.float32, 4, [334, 334, 333], 1e-6, weights=[1.0, 2.0, 0.5, 1.0])


@scenario
def sharded_fp64_uneven(device):
    _sharded_matches(device, torch.float64, 5, [7, 300, 41], 1e-12, rho=0.3, kappa=1.2)


@scenario
def sharded_empty_shard_on_rank_1(device):
    _sharded_matches(device, torch.float32, 3, [200, 0, 57], 1e-6, stages=("rectify", "rescale"))


@scenario
def sharded_writes_into_out(device):
    rank = dist.get_rank()
    shard = _grads(3, 10 * (rank + 1), torch.float64, device, seed=rank)
    out = torch.empty(shard.shape[1], dtype=torch.float64, device=device)
    assert step_sharded(shard, out=out, backend=BACKEND) is out


@scenario
def sharded_baseline_methods(device):
    """Every method on column shards equals the local step, bit-equal coefficients on all ranks."""
    for method, options in [
        ("cagrad", {"rescale": 2}),
        ("mgda", {"normalization": "l2"}),
        ("pcgrad", {"seed": 11}),
        ("linear", None),
    ]:
        _sharded_matches(
            device, torch.float64, 4, [9, 120, 31], 1e-12, weights=[1.0, 2.0, 0.5, 1.0],
            method=method, method_options=options,
        )


@scenario
def sharded_pcgrad_seed_from_the_global_generator(device):
    rank, world = dist.get_rank(), dist.get_world_size()
    full = _grads(4, 30 * world, torch.float64, device)
    torch.manual_seed(5)  # alike on every rank: one drawn seed, checked by the descriptor
    out = step_sharded(full[:, 30 * rank : 30 * rank + 30].contiguous(), method="pcgrad")
    torch.manual_seed(5)  # the same draw for the local step
    ref = camegrad_step(full, method="pcgrad", backend=BACKEND)
    torch.testing.assert_close(out, ref[30 * rank : 30 * rank + 30], rtol=1e-12, atol=1e-12)
    torch.manual_seed(dist.get_rank())
    with pytest.raises(ValueError, match=r"ranks disagree on method_options \(rank 0: hash"):
        step_sharded(_grads(3, 20, torch.float32, device), method="pcgrad")


@scenario
def ranks_disagree_on_method(device):
    method = "mgda" if dist.get_rank() == 1 else "cagrad"
    with pytest.raises(ValueError, match=r"ranks disagree on method \(rank 0: cagrad, rank 1: mgda"):
        step_sharded(_grads(3, 20, torch.float32, device), method=method)


@scenario
def nonfinite_raises_on_every_rank(device):
    shard = _grads(3, 50, torch.float32, device, seed=dist.get_rank())
    if dist.get_rank() == 0:
        shard[1, 3] = float("nan")
    with pytest.raises(ValueError, match=r"task gradient\(s\) \[1\]"):
        step_sharded(shard, backend=BACKEND)
    update, info = step_sharded(shard, backend=BACKEND, nonfinite="skip", return_info=True)
    assert bool(info.skipped) and not update.any()


@scenario
def ranks_disagree_on_n(device):
    n = 3 if dist.get_rank() == 0 else 4
    with pytest.raises(ValueError, match=r"ranks disagree on n \(rank 0: 3, rank 1: 4"):
        step_sharded(_grads(n, 20, torch.float32, device), backend=BACKEND)


@scenario
def ranks_disagree_on_rho(device):
    rho = 0.6 if dist.get_rank() == dist.get_world_size() - 1 else 0.5
    with pytest.raises(ValueError, match=r"ranks disagree on rho \(rank 0: 0\.5.*0\.6\)$"):
        step_sharded(_grads(3, 20, torch.float32, device), rho=rho, backend=BACKEND)


@scenario
def ranks_disagree_on_weights(device):
    weights = [1.0, 1.0, 2.0 if dist.get_rank() == 1 else 1.0]
    with pytest.raises(ValueError, match=r"ranks disagree on weights"):
        step_sharded(_grads(3, 20, torch.float32, device), weights, backend=BACKEND)


@scenario
def invalid_input_on_one_rank_raises_everywhere(device):
    weights = [1.0, -1.0, 1.0] if dist.get_rank() == 0 else None
    match = "weights: expected values >= 0" if dist.get_rank() == 0 else r"rank\(s\) \[0\] rejected"
    with pytest.raises(ValueError, match=match):
        step_sharded(_grads(3, 20, torch.float32, device), weights, backend=BACKEND)


@scenario
def average_task_grads_in_buckets(device):
    rank, world = dist.get_rank(), dist.get_world_size()
    base = _grads(3, 1001, torch.float32, device)
    buffer = base + rank
    assert average_task_grads(buffer, bucket_bytes=1000) is buffer  # 4 buckets, the last partial
    torch.testing.assert_close(buffer, base + (world - 1) / 2, rtol=1e-6, atol=1e-6)


@scenario
def shard_and_gather_round_trip(device):
    rank, world = dist.get_rank(), dist.get_world_size()
    base = _grads(4, 1003, torch.float32, device)
    buffer = base * (rank + 1)
    shard, offsets = shard_task_grads(buffer)
    assert torch.equal(buffer, base * (rank + 1)), "shard_task_grads modified its input"
    sizes = [b - a for a, b in zip(offsets, offsets[1:])]
    assert offsets[0] == 0 and offsets[-1] == 1003 and max(sizes) - min(sizes) <= 1
    mean = base * (world + 1) / 2
    torch.testing.assert_close(shard, mean[:, offsets[rank] : offsets[rank + 1]])
    torch.testing.assert_close(gather_update(shard[2], 1003), mean[2])


@scenario
def reduce_scatter_path(device):
    """The accelerator path of shard_task_grads (gloo runs reduce_scatter since torch 2.8)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    base = _grads(3, 1003, torch.float64, device)
    offsets = _split(1003, world)
    shard = _reduce_scatter_columns(base * (rank + 1), offsets, rank, None)
    mean = base * (world + 1) / 2
    torch.testing.assert_close(shard, mean[:, offsets[rank] : offsets[rank + 1]])


@scenario
def shard_step_gather_pipeline(device):
    """The sharded data-parallel step equals the local step on the averaged buffer.

    d = world - 1 leaves the last rank an empty shard.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    for d in (world - 1, 517):
        buffer = _grads(3, d, torch.float64, device, seed=rank)
        expected = camegrad_step(average_task_grads(buffer.clone()), backend=BACKEND)
        shard, _ = shard_task_grads(buffer)
        update = gather_update(step_sharded(shard, backend=BACKEND), d)
        torch.testing.assert_close(update, expected, rtol=1e-12, atol=1e-12 * expected.abs().max())


# --------------------------------------------------------------------------- harness


@pytest.fixture(scope="module", params=[2, 3], ids=lambda p: f"{p}ranks")
def gloo_results(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"gloo{request.param}")
    return ranks.spawn(request.param, "gloo", tmp, __name__, "SCENARIOS")


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_gloo(gloo_results, name):
    failures = ranks.failures(gloo_results, name)
    assert not failures, failures


@pytest.mark.skipif(
    not dist.is_nccl_available() or torch.cuda.device_count() < 2,
    reason="NCCL needs >= 2 CUDA GPUs",
)
def test_nccl(tmp_path):
    results = ranks.spawn(2, "nccl", tmp_path, __name__, "SCENARIOS", deadline_s=180.0)
    failures = "\n".join(filter(None, (ranks.failures(results, name) for name in SCENARIOS)))
    assert not failures.strip(), failures


def test_arguments_are_checked_before_any_collective():
    with pytest.raises(ValueError, match="bucket_bytes"):
        average_task_grads(torch.ones(2, 3), bucket_bytes=0)
    with pytest.raises(ValueError, match="expected d >= 1"):
        shard_task_grads(torch.ones(2, 0))
    with pytest.raises(ValueError, match="d: expected a positive int"):
        gather_update(torch.ones(0), 0)
