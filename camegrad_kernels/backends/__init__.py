"""Backends: modules with the same small interface, resolved in one place (here).

Every backend module defines::

    NAME: str
    MAX_TASKS: dict[str, int]
        # the largest n of the "gram" and "solve" passes (not named: any n).
    def unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None
        # None when it can run tensors of this device and dtype, else why not.
    def gram(grads: Tensor) -> Tensor
        # grads [n, d] contiguous fp16/bf16/fp32/fp64 -> M [n, n] float64 for every
        # dtype (dtypes.gram_dtype), accurate to ~eps64 |g_i| |g_j|.
    def solvers() -> dict[str, Callable]
        # native solves by method name: solve(gram, weights, *spec.solve_args(...))
        # -> (alpha [n], coeffs [n], gap [], skipped [] bool), no host sync.
        # A method missing here runs its torch-ops solve (the "torch" backend).
    def combine(grads, coeffs, out, skip) -> Tensor
        # out[d] = coeffs @ grads written into ``out`` (grads' dtype); zeros when
        # ``skip`` (a 0-dim bool tensor, or None) is true. No host sync. coeffs
        # come in the Gram's dtype (float64) and are rounded to the combine's
        # dtype, dtypes.accumulate_dtype(grads.dtype), before the kernel.

Inputs reach a backend already validated (validation.py); backends do no checking.
:func:`resolve` picks, once per (backend, device, dtype, n), which backend
runs each pass (a pass beyond a backend's MAX_TASKS, or a method without a
native solver, runs with the torch backend) and caches the :class:`Plan`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple

import torch

# Priority order of "auto": fastest first; "torch" runs anywhere.
PRIORITY = ("cuda", "triton", "cpu", "torch")
NAMES = ("auto",) + PRIORITY


def load(name: str) -> ModuleType:
    """The backend module called ``name`` (one of PRIORITY)."""
    return _MODULES[name]


class Pass(NamedTuple):
    """One pass of a step: the backend that runs it and its function."""

    backend: str
    fn: Callable


@dataclass(frozen=True)
class Plan:
    """Which backend runs each pass, for one (backend, device, dtype, n)."""

    name: str  # the backend asked for (or picked by "auto")
    gram: Pass
    combine: Pass
    solvers: Mapping[str, Pass]


def check_name(backend: object) -> str:
    """``backend`` if it is a backend name ("auto" included), else ValueError."""
    if not isinstance(backend, str) or backend not in NAMES:
        raise ValueError(f"backend: expected one of {NAMES}, got {backend!r}")
    return backend


def requested(backend: str) -> str:
    """The backend asked for: ``backend``, or $CAMEGRAD_BACKEND when it is "auto"."""
    check_name(backend)
    if backend != "auto":
        return backend
    env = os.environ.get("CAMEGRAD_BACKEND", "auto") or "auto"
    if env not in NAMES:
        raise ValueError(f"CAMEGRAD_BACKEND: expected one of {NAMES}, got {env!r}")
    return env


def _pick(name: str, device: torch.device, dtype: torch.dtype) -> ModuleType:
    if name != "auto":
        module = load(name)
        reason = module.unavailable_reason(device, dtype)
        if reason is not None:
            raise RuntimeError(f"backend {name!r} cannot run {dtype} on {device}: {reason}")
        return module
    for candidate in PRIORITY:
        if candidate == "triton" and device.type == "cpu":
            continue  # the Triton interpreter is for tests, never a fast path
        module = load(candidate)
        if module.unavailable_reason(device, dtype) is None:
            return module
    raise RuntimeError(f"no backend can run {dtype} on {device}")  # unreachable: torch


_PLANS: dict[tuple[str, torch.device, torch.dtype, int], Plan] = {}


def resolve(name: str, device: torch.device, dtype: torch.dtype, n: int) -> Plan:
    """The cached :class:`Plan` of backend ``name`` (see :func:`requested`) for n tasks."""
    if torch.compiler.is_compiling():
        # Traced once per graph: a cache lookup there would be a guard on the cache's
        # contents, and filling it a recompilation on the next call.
        return _plan(name, device, dtype, n)
    key = (name, device, dtype, n)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _plan(name, device, dtype, n)
    return plan


def _plan(name: str, device: torch.device, dtype: torch.dtype, n: int) -> Plan:
    module = _pick(name, device, dtype)
    fallback = load("torch")

    def fits(step: str) -> bool:
        return n <= module.MAX_TASKS.get(step, n)

    def pass_of(step: str) -> Pass:
        chosen = module if fits(step) else fallback
        return Pass(chosen.NAME, getattr(chosen, step))

    native = module.solvers() if fits("solve") else {}
    solvers = {
        method: Pass(module.NAME, native[method]) if method in native else Pass("torch", fn)
        for method, fn in fallback.solvers().items()
    }
    return Plan(module.NAME, pass_of("gram"), pass_of("combine"), solvers)


# Imported here, not on demand: none imports triton or a GPU library at import, and a
# plain dict keeps backend resolution traceable by torch.compile (no importlib).
from . import cpu, cuda, torch_ops, triton

_MODULES: dict[str, ModuleType] = {"cuda": cuda, "triton": triton, "cpu": cpu, "torch": torch_ops}


def available() -> list[str]:
    """Backends that can run float32 on this machine, in "auto"'s priority order."""
    names = []
    for name in PRIORITY:
        device = torch.device("cuda" if name == "cuda" else _default_device(name))
        if load(name).unavailable_reason(device, torch.float32) is None:
            names.append(name)
    return names


def _default_device(name: str) -> str:
    return "cuda" if name == "triton" and torch.cuda.is_available() else "cpu"
