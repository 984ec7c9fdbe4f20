"""The step core: one frozen :class:`StepConfig`, one :func:`run_step`.

Every entry point (``camegrad_step``, ``camegrad_coefficients``, the sharded
step, the trainers, ``CAME_Grad``) builds a StepConfig once with
:func:`make_config` (all argument checks happen there) and hands it to
:func:`run_step` / :func:`solve`. Data flows one way::

    grads -> gram pass -> solve (the method's, on the Gram) -> combine -> nonfinite policy

The passes run on the backends that :func:`camegrad_kernels.backends.resolve`
planned for (backend, device, dtype, n), and ``info.backends`` says which.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import torch
from torch import Tensor

from . import backends, methods, nonfinite, validation
from .dtypes import accumulate_dtype, gram_dtype


@dataclass
class Coefficients:
    """Result of :func:`camegrad_coefficients` (all tensors on the Gram's device).

    coeffs [n]: g_final = coeffs @ G. skipped [] bool: nothing was solved, coeffs
    are 0 and alpha / duality_gap NaN, because the Gram matrix was not finite or
    (:func:`camegrad_coefficients` given a Gram on a non-CPU device) failed the
    device-side Gram checks: a negative diagonal entry, an asymmetry
    |M_ij - M_ji| > 16 eps sqrt(M_ii M_jj), or |M_ij| > sqrt(M_ii M_jj) (1 + sqrt(eps))
    (eps of the Gram's dtype). A CPU Gram failing those checks, or not positive
    semidefinite, is a ValueError instead. From :func:`camegrad_step` with
    ``nonfinite="skip"``, skipped also says that the update overflowed grads'
    dtype (then zeroed; coeffs are kept). alpha [n] and duality_gap [] depend
    on the method: ``camegrad_kernels.methods.get(method).alpha`` and ``.gap``
    say what they are ("camegrad": the Stage-1 dual and its normalised
    duality gap, docs/camegrad.md §2).
    """

    alpha: Tensor
    coeffs: Tensor
    duality_gap: Tensor
    skipped: Tensor


@dataclass
class StepInfo(Coefficients):
    """What :func:`camegrad_step` computed, as device tensors (reading syncs).

    gram [n, n]: G G^T. cosines [n, n]: pairwise task cosines (0 for a zero
    gradient). backends: the backend that really ran each pass, as
    ``{"gram": ..., "solve": ..., "combine": ...}`` (a pass beyond a backend's
    limits, or a method it has no native solver for, runs with "torch").
    backend: that backend when all passes ran on one, else
    "gram=cuda,solve=torch,combine=cuda".
    """

    gram: Tensor = None  # type: ignore[assignment]
    cosines: Tensor = None  # type: ignore[assignment]
    backend: str = ""
    backends: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StepConfig:
    """A step's settings, checked once (:func:`make_config`), then carried through every layer.

    ``backend`` is the backend asked for ($CAMEGRAD_BACKEND already read for
    "auto"); ``weights`` the n checked host weights (None: all ones);
    ``nonfinite`` "raise" or "skip".
    """

    method: methods.MethodSpec
    options: Mapping[str, object]
    hyper: methods.Hyper
    weights: tuple[float, ...] | None
    backend: str
    nonfinite: str


def make_config(
    *,
    n: int,
    dtype: torch.dtype,
    what: str,
    weights: validation.Weights = None,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    stages: Sequence[str] = validation.DEFAULT_STAGES,
    backend: str = "auto",
    nonfinite: str = "raise",
    method: str = "camegrad",
    method_options: Mapping[str, object] | None = None,
) -> StepConfig:
    """Check every setting of a step on n tasks whose coefficients are combined in ``dtype``.

    ``what`` names where ``dtype`` comes from, for the error messages. The
    weights, rho, kappa, eps and kappa * sum(weights) must be finite in it.
    """
    spec = methods.get(method)
    options = spec.check_options(method_options)
    rho, kappa, nu, eps = validation.check_hyper(rho, kappa, nu, eps)
    mask = validation.stage_mask(stages)
    if nonfinite not in validation.NONFINITE:
        raise ValueError(f"nonfinite: expected 'raise' or 'skip', got {nonfinite!r}")
    host = validation.host_weights(weights, n)
    validation.check_scales(host, rho, kappa, eps, dtype, what)
    return StepConfig(
        method=spec,
        options=MappingProxyType(options),
        hyper=methods.Hyper(rho, kappa, nu, eps, mask),
        weights=host,
        backend=backends.requested(backend),
        nonfinite=nonfinite,
    )


def with_drawn_seed(config: StepConfig) -> StepConfig:
    """``config`` with its method's seed option drawn (from torch's global CPU generator) if None.

    For steps whose randomness must be fixed on the host before it runs: the
    sharded step (all ranks check the same seed) and the trainers.
    """
    key = config.method.random_option
    if key is None or config.options[key] is not None:
        return config
    return with_seed(config, int(torch.randint(0, 2**62, (), dtype=torch.int64)))


def with_seed(config: StepConfig, seed: int) -> StepConfig:
    """``config`` with its method's seed option set to ``seed`` (unchanged if it has none)."""
    key = config.method.random_option
    if key is None:
        return config
    return replace(config, options=MappingProxyType({**config.options, key: seed}))


def plan_of(config: StepConfig, grads: Tensor) -> backends.Plan:
    """The backends that run a step of ``config`` on ``grads`` [n, d]."""
    return backends.resolve(config.backend, grads.device, grads.dtype, grads.shape[0])


def task_cosines(gram: Tensor) -> Tensor:
    """Pairwise cosines M_ij / sqrt(M_ii M_jj) from the Gram matrix (0 for zero rows)."""
    norms = torch.sqrt(torch.diagonal(gram).clamp_min(0.0))
    denom = norms[:, None] * norms[None, :]
    return torch.where(denom > 0, gram / denom.clamp_min(torch.finfo(gram.dtype).tiny), 0.0)


def solve(
    config: StepConfig, plan: backends.Plan, gram: Tensor, w: Tensor
) -> tuple[methods.SolveResult, str]:
    """The method's coefficients from ``gram`` with the planned solver; (result, its backend)."""
    n = gram.shape[0]
    args = config.method.solve_args(config.hyper, config.options, n, gram.device)
    solver = plan.solvers[config.method.name]
    return solver.fn(gram, w.to(gram.dtype), *args), solver.backend


def no_phase(name: str) -> None:
    """The default ``on_phase`` of :func:`run_step`: nothing."""
    return


def run_step(
    config: StepConfig,
    grads: Tensor,
    out: Tensor,
    *,
    return_info: bool,
    reduce_gram: Callable[[Tensor], Tensor] | None = None,
    any_rank: Callable[[Tensor], Tensor] | None = None,
    on_phase: Callable[[str], None] = no_phase,
) -> tuple[Tensor, StepInfo | None]:
    """One step on checked ``grads`` [n, d] into checked ``out`` [d]: (out, info or None).

    ``reduce_gram`` (the sharded step): the rank-local Gram -> the global one.
    ``any_rank``: a 0-dim bool flag -> that flag OR-ed over all ranks, so that
    every rank skips, or raises on, an overflowed update alike. ``on_phase``
    is called with "gram", "solve" and "combine" as each pass is queued (the
    trainer's timing mode synchronises and reads the clock there).
    """
    n, d = grads.shape
    device = grads.device
    plan = plan_of(config, grads)
    w = validation.device_weights(config.weights, n, accumulate_dtype(grads.dtype), device)
    spec = config.method
    gram = None
    if spec.needs_gram or return_info:
        if d:
            gram = plan.gram.fn(grads)
        else:  # an empty column shard contributes an exact zero partial
            gram = torch.zeros(n, n, dtype=gram_dtype(grads.dtype, device), device=device)
        if reduce_gram is not None:
            gram = reduce_gram(gram)
    on_phase("gram")
    if gram is None:  # a Gram-free method, and no info asked for: coeffs = w
        coeffs = w.to(gram_dtype(grads.dtype, device))
        alpha = gap = None
        skipped = torch.zeros((), dtype=torch.bool, device=device)
        solved_by = "none"
        check_update = config.nonfinite == "raise"
    else:
        (alpha, coeffs, gap, skipped), solved_by = solve(config, plan, gram, w)
        # "raise": one host read of the Gram's flags, the coefficients' flags and the bound.
        check_update = config.nonfinite == "raise" and nonfinite.raise_on_bad_solve(
            gram, coeffs, out.dtype, accumulate_dtype(grads.dtype)
        )
    on_phase("solve")
    if d:
        skip = skipped if config.nonfinite == "skip" else None
        plan.combine.fn(grads, coeffs, out, skip)
    validation.written(out)  # before a raise below, so that a caller catching it sees out changed
    skipped = nonfinite.guard_update(
        out, skipped, config.nonfinite, check_update, any_rank, grads if gram is None else None
    )
    on_phase("combine")
    if not return_info:
        return out, None
    assert gram is not None and alpha is not None and gap is not None
    ran = {"gram": plan.gram.backend, "solve": solved_by, "combine": plan.combine.backend}
    info = StepInfo(alpha, coeffs, gap, skipped, gram, task_cosines(gram), describe(ran), ran)
    return out, info


def describe(ran: Mapping[str, str]) -> str:
    """One backend name when every pass ran on it, else "gram=...,solve=...,combine=..."."""
    names = set(ran.values())
    if len(names) == 1:
        return next(iter(names))
    return ",".join(f"{step}={name}" for step, name in ran.items())


def checked_on_host(gram: Tensor) -> bool:
    """Whether a user-given Gram is checked on the host (CPU) or flagged on its device."""
    return gram.device.type == "cpu"


def coefficients(config: StepConfig, gram: Tensor, check_gram: bool) -> Coefficients:
    """The method's coefficients from a checked ``gram`` [n, n] (fp32/fp64) on its device.

    ``check_gram``: a user-given Gram is checked to be one (a CPU one on the
    host, ValueError; another one on its device, flagged as skipped).
    """
    n = gram.shape[0]
    plan = backends.resolve(config.backend, gram.device, gram.dtype, n)
    on_host = checked_on_host(gram)
    if check_gram and on_host:
        validation.check_host_gram(gram)
    w = validation.device_weights(config.weights, n, gram.dtype, gram.device)
    result, _ = solve(config, plan, gram, w)
    if check_gram and not on_host:
        result = nonfinite.flag_bad_gram(gram, result)
    return Coefficients(*result)
