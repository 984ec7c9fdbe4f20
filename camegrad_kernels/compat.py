"""A drop-in wrapper in the style of the paper's repository: the optimizer takes the losses.

    optimizer = CAME_Grad(torch.optim.AdamW(model.parameters(), lr=1e-4),
                          rho=0.5, kappa=1.5, nu=0.2)
    for batch in loader:
        loss_lm, loss_cls = model(batch)
        optimizer.step([loss_lm, loss_cls], task_weights=[1.0, w])

:meth:`CAME_Grad.step` does the whole iteration: ``zero_grad`` of the wrapped
optimizer, the per-task backwards and the CAME-Grad update of the shared
parameters (:class:`camegrad_kernels.trainer.CAMEGrad`, whose contract holds:
non-shared parameters get ``sum_i w_i dL_i/dp``), then the wrapped optimizer's
``step()``. Every loss that should reach the parameters must be in ``losses``:
gradients left in ``.grad`` before the call are discarded.

Shared parameters: pass ``shared_params`` (e.g. ``model.encoder.parameters()``),
or leave it None to detect them once, at the first :meth:`step`: every
parameter of the optimizer's param groups (with ``requires_grad``) that
``torch.autograd.grad(loss_i, params, allow_unused=True)`` reaches from more
than one of the losses is shared (with one loss: every parameter it reaches).
The detection costs one extra backward per task, once; the set is then fixed,
so a parameter that only some batches reach should be named explicitly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .trainer import CAMEGrad, TrainStepInfo

__all__ = ["CAME_Grad"]


class CAME_Grad:  # the paper repository's name
    """Wrap ``optimizer`` so that ``step(losses, task_weights)`` runs a CAME-Grad step.

    Args:
        optimizer: any ``torch.optim.Optimizer`` over the model's parameters.
        rho, kappa, nu: the paper's hyperparameters (defaults: paper Sec. 4.3).
        shared_params: the shared parameters, or None to detect them at the
            first step (see the module doc).
        method, method_options: the multi-task method, as
            :func:`camegrad_kernels.camegrad_step` ("camegrad" default; the
            baselines "cagrad", "mgda", "pcgrad", "linear"); validated here.
        **options: further :class:`~camegrad_kernels.trainer.CAMEGrad`
            arguments (``eps``, ``stages``, ``backend``, ``nonfinite``, ``timing``).

    ``zero_grad``, ``param_groups``, ``state``, ``state_dict`` and
    ``load_state_dict`` are the wrapped optimizer's. ``last_info`` holds the
    :class:`~camegrad_kernels.trainer.TrainStepInfo` of the last step.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        rho: float = 0.5,
        kappa: float = 1.5,
        nu: float = 0.2,
        shared_params: Iterable[Tensor] | None = None,
        method: str = "camegrad",
        method_options: dict | None = None,
        **options: Any,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        # Constructor weights are the default of every step(..., task_weights=None).
        self._default_weights = options.pop("weights", None)
        if "stages" in options and not isinstance(options["stages"], str):
            options["stages"] = tuple(options["stages"])  # used twice: no one-shot iterators
        self._hyper: dict[str, Any] = {
            "rho": rho, "kappa": kappa, "nu": nu, "method": method,
            "method_options": method_options, **options,
        }
        self.camegrad: CAMEGrad | None = None
        if shared_params is not None:
            self.camegrad = CAMEGrad(shared_params, **self._hyper)
        else:  # validate the hyperparameters now, not at the first step
            # in the parameters' dtype: kappa must be finite in its combine dtype
            floating = [
                p for g in optimizer.param_groups for p in g["params"] if p.is_floating_point()
            ]
            dtype = floating[0].dtype if floating else torch.float32
            probe = torch.zeros(1, dtype=dtype, requires_grad=True)
            CAMEGrad([probe], **self._hyper)
        self.last_info: TrainStepInfo | None = None

    # ------------------------------------------------------------------ delegation

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    # ------------------------------------------------------------------ the step

    @property
    def shared_params(self) -> list[Tensor] | None:
        """The shared parameters (None before the first step when auto-detected)."""
        return None if self.camegrad is None else list(self.camegrad.params)

    def _detect_shared(self, losses: Sequence[Tensor]) -> list[Tensor]:
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        unique = list({id(p): p for p in params}.values())
        if not unique:
            raise ValueError("optimizer: no parameter with requires_grad=True to optimise")
        counts = [0] * len(unique)
        for loss in losses:
            grads = torch.autograd.grad(loss, unique, retain_graph=True, allow_unused=True)
            for k, g in enumerate(grads):
                counts[k] += g is not None
        need = 1 if len(losses) == 1 else 2
        shared = [p for p, c in zip(unique, counts) if c >= need]
        if not shared:
            raise ValueError(
                "shared_params=None: no parameter of the optimizer receives a gradient from more "
                "than one task; pass shared_params explicitly"
            )
        return shared

    def step(
        self, losses: Sequence[Tensor], task_weights: Sequence[float] | Tensor | None = None
    ) -> TrainStepInfo:
        """zero_grad, per-task backwards, CAME-Grad update of the shared parameters, step.

        ``task_weights``: n weights (w_i >= 0, positive sum; default: the
        constructor's ``weights``, else all ones), may change from call to call. Returns the step's TrainStepInfo.
        """
        items = list(losses.unbind(0)) if isinstance(losses, Tensor) and losses.dim() == 1 else losses
        items = list(items)
        if self.camegrad is None:
            for i, loss in enumerate(items):
                if not isinstance(loss, Tensor) or not loss.requires_grad:
                    raise ValueError(f"losses[{i}]: expected a scalar tensor with an autograd graph")
            self.camegrad = CAMEGrad(self._detect_shared(items), **self._hyper)
        cg = self.camegrad
        weights = self._default_weights if task_weights is None else task_weights
        if weights is not None or cg.weights is not None:
            cg.set_weights(weights)
        self.optimizer.zero_grad(set_to_none=True)
        info = cg.backward(items)
        self.optimizer.step()
        self.last_info = info
        return info

    def __repr__(self) -> str:
        return f"CAME_Grad({self.optimizer.__class__.__name__}, {self.camegrad!r})"
