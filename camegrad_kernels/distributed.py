"""CAME-Grad across ranks: a column-sharded step, and the data-parallel helpers.

Columns of G shard exactly: ``M = G G^T = sum_r G_r G_r^T``. So each rank forms
the Gram of its [n, d_local] slice, one all_reduce of n x n numbers gives every
rank the same M, every rank runs the same deterministic solver (same bits in,
same coefficients out) and combines only its own columns. Recipes and bytes
per step: docs/scaling_out.md.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from . import backends, core, methods, validation
from .core import StepInfo
from .dtypes import FLOAT_DTYPES, accumulate_dtype
from .validation import DEFAULT_STAGES, Weights

ProcessGroup = Optional[dist.ProcessGroup]
# What every rank must agree on; one float64 each (exact for these values).
_FIELDS = (
    "n", "dtype", "rho", "kappa", "nu", "eps", "stages", "nonfinite", "backend", "weights",
    "method", "method_options",
)


def _check_shard(grads: object) -> Tensor:
    """validation.check_grads, except that d_local = 0 (an empty shard) is valid."""
    if isinstance(grads, Tensor) and grads.dim() == 2 and grads.shape[1] == 0:
        validation.check_grads(grads.new_empty(grads.shape[0], 1), "grads_shard")  # every other rule
        return grads.detach()
    return validation.check_grads(grads, "grads_shard")


def _hash48(data: bytes) -> float:
    # 48 bits: an integer that float64 holds exactly, so the descriptor compares it bit for bit.
    digest = hashlib.blake2b(data, digest_size=6).digest()
    return float(int.from_bytes(digest, "little"))


def _descriptor(config: core.StepConfig, grads: Tensor, plan_backend: str) -> list[float]:
    weights = config.weights or (1.0,) * grads.shape[0]
    hyper = config.hyper
    return [
        float(grads.shape[0]),
        float(FLOAT_DTYPES.index(grads.dtype)),
        hyper.rho,
        hyper.kappa,
        hyper.nu,
        hyper.eps,
        float(hyper.stages),
        float(validation.NONFINITE.index(config.nonfinite)),
        float(backends.PRIORITY.index(plan_backend)),
        _hash48(struct.pack(f"{len(weights)}d", *weights)),
        float(methods.METHODS.index(config.method.name)),
        _hash48(repr(sorted(config.options.items())).encode()),
    ]


def _show(field: str, value: float) -> str:
    if field == "dtype":
        return str(FLOAT_DTYPES[int(value)])
    if field == "nonfinite":
        return validation.NONFINITE[int(value)]
    if field == "backend":
        return backends.PRIORITY[int(value)]
    if field == "method":
        return methods.METHODS[int(value)]
    if field in ("weights", "method_options"):
        return f"hash {int(value):012x}"
    return str(int(value)) if field in ("n", "stages") else repr(value)


def _agree(descriptor: list[float] | None, device: torch.device, group: ProcessGroup) -> None:
    """One all_gather of every rank's descriptor; ValueError on all ranks if they differ.

    ``descriptor=None`` says this rank rejected its own inputs: it still takes
    part, so that the other ranks raise instead of waiting in the next collective.
    """
    row = descriptor if descriptor is not None else [float("nan")] * len(_FIELDS)
    mine = torch.tensor(row, dtype=torch.float64, device=device)
    rows = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(rows, mine, group=group)
    table = torch.stack(rows).cpu().tolist()
    if descriptor is None:
        return  # the caller re-raises its own error
    invalid = [rank for rank, r in enumerate(table) if math.isnan(r[0])]  # a rejecting rank
    if invalid:
        raise ValueError(f"step_sharded: rank(s) {invalid} rejected their inputs (see their error)")
    diffs = []
    for i, field in enumerate(_FIELDS):
        if any(r[i] != table[0][i] for r in table):
            values = ", ".join(f"rank {rank}: {_show(field, r[i])}" for rank, r in enumerate(table))
            diffs.append(f"{field} ({values})")
    if diffs:
        raise ValueError("step_sharded: ranks disagree on " + "; ".join(diffs))


def step_sharded(
    grads_shard: Tensor,
    weights: Weights = None,
    *,
    process_group: ProcessGroup = None,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = DEFAULT_STAGES,
    out: Tensor | None = None,
    backend: str = "auto",
    nonfinite: str = "raise",
    return_info: bool = False,
    method: str = "camegrad",
    method_options: dict | None = None,
) -> Tensor | tuple[Tensor, StepInfo]:
    """:func:`camegrad_kernels.step` on G split by columns across ranks.

    Collective: every rank of ``process_group`` (default: the world) must call it.
    ``grads_shard`` is this rank's contiguous [n, d_local] column slice of G
    (shards may be uneven; d_local = 0 is allowed); the result is this rank's
    [d_local] slice of g_final. All other arguments are the step's and must
    be equal on all ranks (checked: one all_gather of a small descriptor, then a
    ValueError on every rank naming what differs). ``info`` holds the global
    Gram and the same coefficients on every rank.

    A method with a seed option (``methods.get(method).random_option``, e.g.
    pcgrad's) given None draws the seed on every rank from torch's global CPU
    generator, as the local step does; the descriptor check then raises unless
    all ranks drew the same (seed them alike, or pass a seed).

    Communication: that descriptor all_gather, plus one all_reduce of the
    [n, n] Gram (float64 for every gradient dtype; none for a Gram-free method
    without ``return_info``). Each rank checks its own update shard
    (``nonfinite`` as in the step), so that all ranks skip, or raise on, an
    update that overflowed on any of them: with ``nonfinite="skip"`` one more
    all_reduce of one number per call; with "raise" only when the update
    bound says it may have overflowed (the same decision on every rank: the
    global Gram and coefficients). ``out`` must not require grad and has its
    version counter bumped, as in the step.
    """
    device = grads_shard.device if isinstance(grads_shard, Tensor) else torch.device("cpu")
    try:
        grads = _check_shard(grads_shard)
        validation.check_bool(return_info, "return_info")
        out = validation.check_out(out, grads)
        validation.check_weights_device(weights, grads.device)
        config = core.make_config(
            n=grads.shape[0], dtype=accumulate_dtype(grads.dtype),
            what=f"the combine dtype of {grads.dtype} gradients", weights=weights, rho=rho,
            kappa=kappa, nu=nu, eps=eps, stages=stages, backend=backend, nonfinite=nonfinite,
            method=method, method_options=method_options,
        )
        config = core.with_drawn_seed(config)  # drawn once here, then checked across ranks
        plan = core.plan_of(config, grads)
        descriptor = _descriptor(config, grads, plan.name)
    except (TypeError, ValueError, RuntimeError):
        _agree(None, device, process_group)
        raise
    _agree(descriptor, device, process_group)

    def reduce_gram(gram: Tensor) -> Tensor:
        gram = gram.contiguous()
        dist.all_reduce(gram, group=process_group)
        return gram

    def any_rank(flag: Tensor) -> Tensor:  # the ranks agree on skipping (or raising on) an update
        value = flag.to(torch.int32).reshape(1)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=process_group)
        return value[0] > 0

    out, info = core.run_step(
        config, grads, out, return_info=return_info, reduce_gram=reduce_gram, any_rank=any_rank
    )
    return (out, info) if return_info else out


camegrad_step_sharded = step_sharded  # the name of earlier releases


# --------------------------------------------------------------------------- data-parallel helpers


def _split(d: int, world: int) -> tuple[int, ...]:
    """Column offsets of an even split, remainder to the first ranks: rank r owns [o[r], o[r+1])."""
    base, extra = divmod(d, world)
    offsets = [0]
    for rank in range(world):
        offsets.append(offsets[-1] + base + (rank < extra))
    return tuple(offsets)


def average_task_grads(
    buffer: Tensor, process_group: ProcessGroup = None, bucket_bytes: int = 25 << 20
) -> Tensor:
    """Average the per-task gradients ``buffer`` [n, d] over the ranks, in place.

    Collective; ``buffer`` has the same shape and dtype on every rank. Run the
    local camegrad_step on it afterwards. Returns ``buffer``.
    """
    flat = validation.check_grads(buffer, "buffer").view(-1)
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"bucket_bytes: expected a positive int, got {bucket_bytes!r}")
    world = dist.get_world_size(process_group)
    if world == 1:
        return buffer
    flat.div_(world)  # divide before summing, as DDP does: p fp16/bf16 gradients can overflow
    # Bounded messages (DDP's 25 MiB default) keep each collective short next to
    # the group's timeout, and the async launches let the buckets overlap.
    step = max(1, bucket_bytes // flat.element_size())
    works = [
        dist.all_reduce(flat[i : i + step], group=process_group, async_op=True)
        for i in range(0, flat.numel(), step)
    ]
    for work in works:
        work.wait()
    return buffer


def shard_task_grads(
    buffer: Tensor, process_group: ProcessGroup = None
) -> tuple[Tensor, tuple[int, ...]]:
    """Average ``buffer`` [n, d] over the ranks and keep this rank's column shard.

    Collective. Returns (shard [n, d_local] contiguous, offsets): rank r owns
    columns offsets[r]:offsets[r + 1] (even split, the remainder spread over the
    first ranks; d < world leaves some ranks an empty shard). ``buffer`` is not
    modified. Feed the shard to :func:`camegrad_step_sharded`.
    """
    buffer = validation.check_grads(buffer, "buffer")
    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    offsets = _split(buffer.shape[1], world)
    lo, hi = offsets[rank], offsets[rank + 1]
    if buffer.device.type == "cpu":
        # CPU backends lack reduce_scatter (MPI; gloo before torch 2.8) or run it as one
        # all_reduce per rank (gloo, pytorch/pytorch#149869: ~2.5x slower than one
        # all_reduce of the whole buffer here), so all_reduce a copy and slice it.
        full = average_task_grads(buffer.clone(), process_group)
        return full[:, lo:hi].contiguous(), offsets
    return _reduce_scatter_columns(buffer, offsets, rank, process_group), offsets


def _reduce_scatter_columns(
    buffer: Tensor, offsets: tuple[int, ...], rank: int, group: ProcessGroup
) -> Tensor:
    # Column slices are strided: pack each rank's slice, divided before the sum as
    # average_task_grads does. (NCCL runs an uneven list as one coalesced group of p reduces.)
    world = len(offsets) - 1
    parts = [buffer[:, a:b].div(world) for a, b in zip(offsets, offsets[1:])]
    shard = buffer.new_empty(buffer.shape[0], offsets[rank + 1] - offsets[rank])
    dist.reduce_scatter(shard, parts, group=group)
    return shard


def gather_update(update_shard: Tensor, d: int, process_group: ProcessGroup = None) -> Tensor:
    """All ranks' [d_local] update shards (split as by :func:`shard_task_grads`) -> the full [d].

    Collective; for when the optimizer holds full parameters on every rank.
    """
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d: expected a positive int, got {d!r}")
    world, rank = dist.get_world_size(process_group), dist.get_rank(process_group)
    offsets = _split(d, world)
    size = offsets[rank + 1] - offsets[rank]
    if not isinstance(update_shard, Tensor):
        raise TypeError(f"update_shard: expected a torch.Tensor, got {type(update_shard).__name__}")
    if update_shard.shape != (size,):
        raise ValueError(
            f"update_shard: expected shape ({size},) (rank {rank}'s share of d = {d}), "
            f"got {tuple(update_shard.shape)}"
        )
    # all_gather wants equal sizes: pad to the largest shard (rank 0's).
    chunk = offsets[1]
    padded = update_shard.new_zeros(chunk)
    padded[:size] = update_shard
    gathered = update_shard.new_empty(world, chunk)
    dist.all_gather(list(gathered.unbind(0)), padded, group=process_group)
    return torch.cat([gathered[r, : offsets[r + 1] - offsets[r]] for r in range(world)])
