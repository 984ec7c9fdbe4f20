"""What a multi-task method is to this package: one :class:`MethodSpec` per module.

A spec says everything that used to be written in a dozen places: the name,
the options (defaults and checks), which of the step's hyperparameters it
reads, the torch-ops solve (the fallback every backend can run, and the
ground truth of the native solvers), the native op the C++/CUDA/Triton
backends implement, what ``alpha`` and the gap mean, the trainer class and
its paper-named arguments, and the bench's plot style. Everything else
(dispatch, fakes, trainer classes, CLI choices, bench labels, the sharded
step's descriptor) is derived from the registry in ``methods/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

# (alpha [n], coeffs [n], gap [], skipped [] bool): what every solve returns.
SolveResult = tuple[Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Hyper:
    """The step's hyperparameters, validated (floats; ``stages`` a solver bit mask)."""

    rho: float
    kappa: float
    nu: float
    eps: float
    stages: int


@dataclass(frozen=True)
class Option:
    """One ``method_options`` entry: its default and the values it accepts.

    ``choices`` (when not empty): the accepted values (bool refused). ``check``:
    otherwise, a function ``(key, value) -> value`` raising TypeError/ValueError.
    """

    name: str
    default: object
    choices: tuple = ()
    check: Callable[[str, object], object] | None = None
    doc: str = ""

    def validate(self, value: object) -> object:
        key = f"method_options[{self.name!r}]"
        if self.check is not None:
            return self.check(key, value)
        if isinstance(value, bool) or value not in self.choices:
            raise ValueError(f"{key}: expected one of {self.choices}, got {value!r}")
        return value


@dataclass(frozen=True)
class TrainerArg:
    """A trainer-class argument under the paper's name, mapped to ours.

    ``to``: "rho" (the one hyperparameter the baselines read) or an option name.
    """

    name: str
    to: str
    default: object


def no_args(hyper: Hyper, options: Mapping[str, object], n: int, device: torch.device) -> tuple:
    return ()


@dataclass(frozen=True)
class MethodSpec:
    """A multi-task method on the three passes (Gram, Gram-space solve, combine).

    solve: the torch-ops solve ``solve(gram [n, n], weights [n], *solve_args)``
        -> :data:`SolveResult`, fixed work, on gram's device, no host sync.
    solve_args: ``(hyper, options, n, device) -> tuple``, the arguments after
        (gram, weights), the same for the torch solve and the native op.
    native_op: name of the ``torch.ops.camegrad`` op (CPU and CUDA kernels) and
        of the ``camegrad_kernels.triton_ops`` function with that signature;
        None: every backend runs ``solve``.
    reads: which of the step's "rho", "kappa", "nu", "eps", "stages" it reads
        (the others are ignored).
    needs_gram: False when the coefficients do not depend on the Gram
        (linear scalarization): the Gram pass runs only if the info asks.
    random_option: the option holding a seed (None for a deterministic
        method): the trainer draws a fresh one per step from its own stream,
        the sharded step draws one for all ranks when it is None.
    alpha, gap: what ``info.alpha`` and ``info.duality_gap`` mean.
    trainer, trainer_args, trainer_doc: the trainer class (None: none) and
        its arguments under the paper's names.
    style: (matplotlib colour, marker) of the bench plots.
    """

    name: str
    title: str
    solve: Callable[..., SolveResult]
    solve_args: Callable[[Hyper, Mapping[str, object], int, torch.device], tuple] = no_args
    options: tuple[Option, ...] = ()
    reads: tuple[str, ...] = ()
    needs_gram: bool = True
    native_op: str | None = None
    random_option: str | None = None
    alpha: str = "NaN (nothing is solved)"
    gap: str = "NaN (nothing is solved)"
    trainer: str | None = None
    trainer_args: tuple[TrainerArg, ...] = ()
    trainer_doc: str = ""
    style: tuple[str, str] = ("tab:gray", "o")

    def defaults(self) -> dict[str, object]:
        return {option.name: option.default for option in self.options}

    def check_options(self, options: Mapping[str, object] | None) -> dict[str, object]:
        """``options`` merged over the defaults, each validated."""
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise TypeError(
                f"method_options: expected a dict or None, got {type(options).__name__}"
            )
        allowed = {option.name: option for option in self.options}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(
                f"method_options: {unknown} not accepted by method {self.name!r}; "
                f"expected some of {sorted(allowed)}"
            )
        merged = {**self.defaults(), **options}
        return {key: allowed[key].validate(value) for key, value in merged.items()}
