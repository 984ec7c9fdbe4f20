"""Training integration: per-task backwards into one buffer, a CAME-Grad step, any optimizer.

    cg = CAMEGrad(model.encoder.parameters(), weights=[1.0, 0.5])
    for batch in loader:
        opt.zero_grad(set_to_none=True)
        losses = model.task_losses(batch)        # n scalar losses, one graph
        info = cg.backward(losses)               # shared .grad = CAME-Grad update
        opt.step()                               # SGD, AdamW, param groups, schedulers...

How :meth:`CAMEGrad.backward` fills gradients (the contract):

* Shared parameters (``shared_params``, frozen ones dropped): ONE contiguous
  ``[n, d]`` buffer is allocated at the first call (n tasks, d = their total
  numel, fixed afterwards). Before task i's backward every shared ``p.grad`` is
  pointed at its view of row i, which was zeroed, so autograd accumulates
  ``dL_i/dp`` straight into the row (no flatten copy; a task that does not
  reach a parameter leaves zeros there). Then ``camegrad_step`` writes the
  update into a preallocated ``[d]`` buffer (``out=``) and each shared ``p.grad``
  is left pointing at its view of it. Whatever the shared ``.grad`` held before
  the call is discarded (gradient accumulation over micro-batches is not
  supported for shared parameters). Both buffers keep their storage across
  steps; ``zero_grad(set_to_none=True)`` between steps is fine.
* Every other leaf reached by the losses ("non-shared": task heads, decoder...)
  gets ``sum_i w_i * dL_i/dp`` from the SAME per-task backwards, ACCUMULATED
  into its existing ``.grad`` like a normal ``backward()`` (so zero it between
  steps as usual). The weighting: when some w_i != 1, the autograd graph of
  the losses is walked once per call to find its leaves, and a tensor hook that
  multiplies the incoming gradient by the current task's w_i is put on each
  non-shared leaf for the duration of the call (removed before returning, so
  other backward passes are unaffected). The shared rows are never scaled:
  they hold the raw g_i, exactly, even for w_i = 0. With all weights 1 (the
  default) no walk and no hook happen.
* ``retain_graph=True`` for every task but the last, so the losses may share
  one forward graph; it is freed after the last task.

Mixed precision:

* Shared parameters must share one dtype (fp16/bf16/fp32/fp64); the buffers
  and the update have that dtype (bf16/fp16 Gram and solve accumulate in fp32).
* ``torch.autocast`` needs nothing special: the gradients land in the
  parameters' dtype.
* ``torch.amp.GradScaler``: pass ``[scaler.scale(l) for l in losses]``.
  CAME-Grad is positively 1-homogeneous in G: scaling every g_i by S leaves
  alpha and the coefficients c unchanged and scales the update c^T G by S (up to the eps of Stage 2, which
  is then relatively S times smaller), so after ``scaler.unscale_``/
  ``scaler.step`` the optimizer sees the unscaled update, exactly like with a
  plain backward. Use ``nonfinite="propagate"`` with a scaler: an overflowed
  task gradient then makes the update NaN (no host sync), ``scaler.step`` skips
  the step and ``scaler.update`` lowers the scale. ("skip" would write a zero,
  finite update, which a scaler cannot see; "raise" raises ValueError.) As
  always with GradScaler, the parameters themselves must be fp32.

Host syncs: none, except ``nonfinite="raise"`` (one n x n read, the default)
and non-uniform weights, which ``camegrad_step`` copies to the device (n
numbers) on every call. After an error inside :meth:`CAMEGrad.backward` the
shared ``.grad`` is the zeroed update buffer (never a task row, never a stale
update).

Timing mode (``timing=True``): the device is synchronised between phases and
``self.timings`` holds the last call's seconds for "backward" (all per-task
backwards), "gram", "solve" and "combine"; the phases are laps of the one
step (``core.run_step``'s ``on_phase`` callback), so the timed step is the
untimed one. Off by default: it syncs the host.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from . import backends, core, devices, methods, validation
from .core import StepInfo
from .dtypes import accumulate_dtype
from .leaf_weights import weighted_leaves
from .task_grads import TaskGradBuffer, check_losses, shared_list
from .validation import DEFAULT_STAGES, Weights

_NONFINITE = ("raise", "skip", "propagate")


@dataclass
class TrainStepInfo(StepInfo):
    """:class:`~camegrad_kernels.api.StepInfo` plus training diagnostics (device tensors).

    task_norms [n]: ||g_i|| = sqrt(diag gram). negative_ratio []: fraction of the
    task pairs i < j whose gradient cosine is < 0 (paper Fig. 3; NaN for n = 1).
    losses [n]: the detached loss values.
    """

    task_norms: Tensor = None  # type: ignore[assignment]
    negative_ratio: Tensor = None  # type: ignore[assignment]
    losses: Tensor = None  # type: ignore[assignment]

    @classmethod
    def of(cls, info: StepInfo, losses: Sequence[Tensor], pairs: Tensor) -> TrainStepInfo:
        """``info`` with the diagnostics of a step on ``losses`` (device ops, no sync).

        ``pairs`` [2, n(n-1)/2]: the task pairs i < j (integer indices: a boolean
        mask would make the selection's size data-dependent, a host sync on a GPU).
        """
        gram = info.gram
        values = {f.name: getattr(info, f.name) for f in fields(StepInfo)}
        return cls(
            **values,
            task_norms=torch.sqrt(torch.diagonal(gram).clamp_min(0.0)),
            negative_ratio=(info.cosines[pairs[0], pairs[1]] < 0).to(gram.dtype).mean(),
            losses=torch.stack(
                [loss.detach().reshape(()).to(gram.device, gram.dtype) for loss in losses]
            ),
        )


class CAMEGrad:
    """CAME-Grad for a model whose tasks share ``shared_params``; see the module doc.

    Args:
        shared_params: iterable of the shared parameters (or an ``nn.Module``);
            frozen ones are ignored; one dtype and one device.
        weights: n task weights (>= 0, positive sum); default all ones.
        rho, kappa, nu, eps, stages, backend: as :func:`camegrad_kernels.camegrad_step`
            (``stages=()`` is linear scalarization: update = sum_i w_i g_i).
        nonfinite: "raise" (ValueError naming the tasks; one n x n host read),
            "skip" (zero update, ``info.skipped`` set) or "propagate" (NaN update,
            ``info.skipped`` set: for GradScaler). The last two do not sync.
        timing: synchronise and time the phases into ``self.timings``.
        method, method_options: as :func:`camegrad_kernels.camegrad_step`
            ("camegrad" default; "cagrad", "mgda", "pcgrad", "linear" solve the
            baselines of :mod:`camegrad_kernels.methods` on the same Gram; they
            read ``rho`` and the weights only). Validated here, at construction.
            PCGrad's ``seed`` seeds the trainer's stream of task orders: a fresh
            order every step, the same sequence for the same seed.
    """

    def __init__(
        self,
        shared_params: Iterable[Tensor] | nn.Module,
        weights: Weights = None,
        *,
        rho: float = 0.5,
        kappa: float = 1.5,
        nu: float = 0.2,
        eps: float = 1e-8,
        stages: Sequence[str] = DEFAULT_STAGES,
        backend: str = "auto",
        nonfinite: str = "raise",
        timing: bool = False,
        method: str = "camegrad",
        method_options: dict | None = None,
    ) -> None:
        self.buffer = TaskGradBuffer(shared_list(shared_params))
        self.params = self.buffer.params
        if isinstance(stages, str):
            validation.stage_mask(stages)  # raises the clear TypeError
        stages = tuple(stages)  # an iterator must not be used up by the check
        backends.check_name(backend)
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite: expected one of {_NONFINITE}, got {nonfinite!r}")
        self.nonfinite = nonfinite
        self._settings = {
            "rho": rho, "kappa": kappa, "nu": nu, "eps": eps, "stages": stages,
            "backend": backend, "method": method, "method_options": method_options,
            # "propagate" is "skip" for the step, then NaN written over a skipped update.
            "nonfinite": "skip" if nonfinite == "propagate" else nonfinite,
        }
        self.timing = bool(timing)
        self.timings: dict[str, float] = {}
        self._clock = 0.0
        first = self.params[0]
        self.device, self.dtype = first.device, first.dtype
        self.set_weights(weights)  # builds self.config: every setting checked once, here
        spec, options = self.config.method, self.config.options
        self.rho, self.kappa, self.nu, self.eps = (
            self.config.hyper.rho, self.config.hyper.kappa, self.config.hyper.nu,
            self.config.hyper.eps,
        )
        self.stages, self.backend = stages, backend
        self.method, self.method_options = spec.name, dict(options)
        # A random method (PCGrad) draws a fresh seed every step from this stream,
        # seeded by its seed option (None: from torch's global CPU generator).
        seed = options.get(spec.random_option) if spec.random_option else None
        if seed is None:
            seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
        self._orders = torch.Generator().manual_seed(seed)
        self.numel = self.buffer.numel

    @classmethod
    def preset(
        cls,
        name: str,
        shared_params: Iterable[Tensor] | nn.Module,
        dataset: str = "mimic-cxr",
        **overrides: object,
    ) -> CAMEGrad:
        """A CAMEGrad with the paper's (rho, kappa, nu) for backbone ``name`` on ``dataset``.

        From :data:`camegrad_kernels.presets.PRESETS` (paper Tables D.1 and E.1);
        ``overrides`` (any constructor argument, e.g. ``weights=[1.0, 0.5]`` or
        ``nu=0.3``) win over the preset.
        """
        from .presets import preset  # presets is data only; imported lazily

        options: dict[str, object] = {**preset(name, dataset), **overrides}
        return cls(shared_params, **options)  # type: ignore[arg-type]

    def set_weights(self, weights: Weights) -> None:
        """Replace the task weights (n of them, >= 0, positive sum; None: all ones).

        Takes effect at the next :meth:`backward`. After the first call the
        number of weights must equal the number of tasks fixed then.
        """
        if weights is not None:
            if isinstance(weights, Tensor) and weights.dim() != 1:
                raise ValueError(
                    f"weights: expected a 1-D tensor of n weights, got shape {tuple(weights.shape)}"
                )
            try:
                count = len(weights)  # type: ignore[arg-type]
            except TypeError:
                raise TypeError(
                    f"weights: expected a sequence of numbers, got {type(weights).__name__}"
                ) from None
            if count < 1:
                raise ValueError("weights: expected at least one task weight, got none")
            if self.n is not None and count != self.n:
                raise ValueError(
                    f"weights: expected {self.n} weights (the number of tasks), got {count}"
                )
        # Every setting checked here, once (the weights, rho, kappa, eps and kappa * sum(w)
        # finite in the combine dtype): the error comes at the call that set them.
        self.config = core.make_config(
            n=1 if weights is None else count, dtype=accumulate_dtype(self.dtype),
            what=f"the combine dtype of {self.dtype} gradients", weights=weights,
            **self._settings,
        )
        parsed = None if self.config.weights is None else list(self.config.weights)
        self.weights: list[float] | None = parsed
        # All-ones weights are passed as None: the step then copies nothing to the device.
        uniform = parsed is None or all(w == 1.0 for w in parsed)
        if uniform:
            self.config = replace(self.config, weights=None)
        self._needs_hooks = not uniform

    # ------------------------------------------------------------------ helpers

    @property
    def grads(self) -> Tensor | None:
        """The [n, d] task gradients of the last call (None before the first)."""
        return self.buffer.rows

    @property
    def update(self) -> Tensor:
        """The [d] update that the shared ``.grad`` views."""
        return self.buffer.update

    @property
    def n(self) -> int | None:
        """The number of tasks (fixed at the first call; None before it)."""
        return self.buffer.n

    # ------------------------------------------------------------------ the step

    def backward(self, losses: Sequence[Tensor]) -> TrainStepInfo:
        """Per-task backwards, then the CAME-Grad update into the shared ``.grad``.

        Returns a :class:`TrainStepInfo` of device tensors (reading them syncs).
        """
        items = check_losses(losses, None if self.weights is None else len(self.weights), self.n)
        n = len(items)
        if self.timing:
            devices.synchronize(self.device)
            self._clock = time.perf_counter()
        buffer = self.buffer
        try:
            with weighted_leaves(items, buffer.shared_ids, self._needs_hooks) as leaf_weights:
                buffer.allocate(n)
                for i, loss in enumerate(items):
                    buffer.point_at_row(i)
                    leaf_weights.scale = 1.0 if self.weights is None else self.weights[i]
                    loss.backward(retain_graph=i < n - 1)
        except BaseException:
            buffer.update.zero_()
            raise
        finally:
            buffer.point_at_update()  # never leave .grad aliasing a task row

        if self.timing:
            self._lap("backward")
        try:
            info = self._step()
        except Exception:
            self.update.zero_()  # the shared .grad must not keep the previous step's update
            raise
        if self.nonfinite == "propagate":
            self.update.masked_fill_(info.skipped, math.nan)

        return TrainStepInfo.of(info, items, self.buffer.pairs)

    def step_config(self) -> core.StepConfig:
        """The config of the next step: the trainer's, with this step's seed for a random method."""
        if self.config.method.random_option is None:
            return self.config
        seed = int(torch.randint(0, 2**62, (), generator=self._orders, dtype=torch.int64))
        return core.with_seed(self.config, seed)

    def _step(self) -> StepInfo:
        assert self.grads is not None
        on_phase = self._lap if self.timing else core.no_phase
        _, info = core.run_step(
            self.step_config(), self.grads, self.update, return_info=True, on_phase=on_phase
        )
        assert info is not None
        return info

    def _lap(self, phase: str) -> None:
        """Timing mode: synchronise, and record the seconds since the last lap as ``phase``."""
        devices.synchronize(self.device)
        now = time.perf_counter()
        self.timings[phase] = now - self._clock
        self._clock = now

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(params={len(self.params)}, d={self.numel}, dtype={self.dtype}, "
            f"device={self.device}, n={self.n}, weights={self.weights}, rho={self.rho}, "
            f"kappa={self.kappa}, nu={self.nu}, eps={self.eps}, stages={self.stages}, "
            f"backend={self.backend!r}, nonfinite={self.nonfinite!r}, method={self.method!r})"
        )


# --------------------------------------------------------------------------- baselines
# The same trainer (buffer, hooks, .grad writing, nonfinite policy, timing) with
# another method's coefficients: one class per method spec that names a trainer,
# with the method's own hyperparameters under its paper's names.


def method_trainer(spec: methods.MethodSpec) -> type[CAMEGrad]:
    """The trainer class of ``spec``: ``cls(shared_params, weights=None, *, <paper args>, ...)``."""
    paper = {arg.name: arg for arg in spec.trainer_args}

    def __init__(
        self: CAMEGrad,
        shared_params: Iterable[Tensor] | nn.Module,
        weights: Weights = None,
        *,
        backend: str = "auto",
        nonfinite: str = "raise",
        timing: bool = False,
        **kwargs: object,
    ) -> None:
        unknown = sorted(set(kwargs) - set(paper))
        if unknown:
            raise TypeError(
                f"{spec.trainer}() got unexpected keyword argument(s) {unknown}; "
                f"expected some of {sorted(paper)} and backend, nonfinite, timing"
            )
        values = {name: kwargs.get(name, arg.default) for name, arg in paper.items()}
        hyper = {paper[k].to: v for k, v in values.items() if paper[k].to == "rho"}
        options = {paper[k].to: v for k, v in values.items() if paper[k].to != "rho"}
        CAMEGrad.__init__(
            self, shared_params, weights, backend=backend, nonfinite=nonfinite, timing=timing,
            method=spec.name, method_options=options, **hyper,  # type: ignore[arg-type]
        )

    base = inspect.signature(__init__).parameters
    params = [p for name, p in base.items() if name != "kwargs"]
    params[3:3] = [
        inspect.Parameter(arg.name, inspect.Parameter.KEYWORD_ONLY, default=arg.default)
        for arg in spec.trainer_args
    ]
    __init__.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    doc = f"{spec.trainer_doc}\n\nOther arguments as :class:`CAMEGrad`; see ``camegrad_kernels.methods.{spec.name}``."
    return type(spec.trainer, (CAMEGrad,), {"__init__": __init__, "__doc__": doc, "__module__": __name__})


# CAGrad, MGDA, PCGrad, LinearScalarization, ...: one per method spec with a trainer name.
TRAINERS: dict[str, type[CAMEGrad]] = {
    spec.trainer: method_trainer(spec) for spec in methods.REGISTRY.values() if spec.trainer
}


globals().update(TRAINERS)
__all__ = ["TRAINERS", "CAMEGrad", "TrainStepInfo", "method_trainer", *TRAINERS]  # noqa: PLE0604
