"""PCGrad (Yu et al., NeurIPS 2020), Algorithm 1, in Gram space.

For each task i, ``g_i' = g_i``, then for each other task j in a random order,
if ``<g_i', g_j> < 0``: ``g_i' -= <g_i', g_j> / ||g_j||^2 g_j``; the update is
``sum_i g_i'`` (``reduction="mean"``: divided by n, as the public code's
default). Each g_i' is held as a coefficient vector a_i (``<g_i', g_j> =
(M a_i)_j``); all tasks project in parallel, one step per position of their
orders (n steps, each O(n^3) on n x n numbers). The orders are an [n, n]
integer tensor from :func:`pcgrad_order` (an entry outside [0, n) or equal to
its row is skipped).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .. import devices
from .common import finish, prepare
from .spec import Hyper, MethodSpec, Option, SolveResult, TrainerArg

# splitmix64's constants as int64 (two's complement): torch's int64 arithmetic wraps.
_GOLDEN = -7046029254386353131  # 0x9e3779b97f4a7c15
_MIX1 = -4658895280553007687  # 0xbf58476d1ce4e5b9
_MIX2 = -7723592293110705685  # 0x94d049bb133111eb


def _shift_right(x: Tensor, k: int) -> Tensor:
    return (x >> k) & ((1 << (64 - k)) - 1)  # logical, from torch's arithmetic shift


def _mix(x: Tensor) -> Tensor:
    """splitmix64's finaliser: a bijection of int64 that scatters every input bit."""
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def pcgrad_order(n: int, seed: int | Tensor | None = None) -> Tensor:
    """[n, n] int64 CPU tensor: row i = the order in which task i visits the tasks.

    Row i sorts hash(seed, i, j) over j: n independent permutations made by
    integer tensor ops (so ``torch.compile`` traces it). ``seed``: an int, a
    0-dim int64 CPU tensor, or None: drawn from torch's global CPU generator
    (reproducible under ``torch.manual_seed``, a fresh order on every call).
    No device work, no host sync. Entry i of row i is skipped by PCGrad.
    """
    if seed is None:
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)
    key = _mix(torch.as_tensor(seed, dtype=torch.int64))
    cells = torch.arange(n * n, dtype=torch.int64).view(n, n)
    return torch.argsort(_mix(key + cells * _GOLDEN), dim=1, stable=True)


def pcgrad_coefficients(M: Tensor, w: Tensor, order: Tensor, reduction: str = "sum") -> SolveResult:
    """PCGrad coefficients (see the module doc); ``order`` [n, n] from :func:`pcgrad_order`."""
    finite, Mw, w, nan, out_dtype = prepare(M, w)
    n = Mw.shape[0]
    tiny = torch.finfo(Mw.dtype).tiny
    rows = torch.arange(n, device=Mw.device)
    A = torch.eye(n, dtype=Mw.dtype, device=Mw.device)  # row i: coefficients of g_i'
    sq = torch.diagonal(Mw)
    order = order.to(Mw.device)
    for k in range(n):
        j = order[:, k]  # the task each i projects against at this step
        valid = (j >= 0) & (j < n) & (j != rows)
        j = j.clamp(0, n - 1)  # an invalid entry reads a real task, then is ignored
        dots = (A @ Mw)[rows, j]  # <g_i', g_j>
        norm2 = sq[j]
        project = (dots < 0) & valid & (norm2 > 0)
        step = torch.where(project, dots / norm2.clamp_min(tiny), torch.zeros_like(dots))
        A = A - step[:, None] * torch.nn.functional.one_hot(j, n).to(A.dtype)
    coeffs = A.sum(dim=0)
    if reduction == "mean":
        coeffs = coeffs / n
    return finish(finite, nan.expand(n).clone(), w * coeffs, nan.clone(), nan, out_dtype)


def solve_args(
    hyper: Hyper, options: Mapping[str, object], n: int, device: torch.device
) -> tuple[Tensor, str]:
    order = pcgrad_order(n, options["seed"])  # type: ignore[arg-type]
    return devices.upload(order, device), str(options["reduction"])


def _check_seed(key: str, value: object) -> object:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{key}: expected an int or None, got {value!r}")
    return value


SPEC = MethodSpec(
    name="pcgrad",
    title="PCGrad",
    solve=pcgrad_coefficients,
    solve_args=solve_args,
    options=(
        Option("seed", None, check=_check_seed, doc="int or None (torch's global CPU generator)"),
        Option("reduction", "sum", choices=("sum", "mean")),
    ),
    native_op="pcgrad_coefficients",
    random_option="seed",
    trainer="PCGrad",
    trainer_args=(TrainerArg("seed", "seed", None), TrainerArg("reduction", "reduction", "sum")),
    trainer_doc=(
        "PCGrad (Yu et al., NeurIPS 2020): pairwise projections in a random task order.\n\n"
        "A fresh order every step, drawn from the trainer's stream seeded with ``seed`` (two "
        "trainers with the same seed make the same orders; ``None`` seeds it from torch's global "
        'CPU generator). ``reduction``: "sum" (default) or "mean" (the public code\'s default).'
    ),
    style=("tab:purple", "D"),
)
