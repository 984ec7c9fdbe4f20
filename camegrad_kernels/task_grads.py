"""The trainer's task-gradient buffer: one [n, d] buffer, its row views, the update buffer.

Before task i's backward every shared ``p.grad`` points at its view of row i,
so autograd accumulates dL_i/dp straight into the row (no flatten copy); after
the step each ``p.grad`` points at its view of the [d] update.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def shared_list(shared_params: object) -> list[Tensor]:
    """The trainable shared parameters, checked: one dtype, one device, dense leaves."""
    if isinstance(shared_params, nn.Module):
        shared_params = shared_params.parameters()
    if isinstance(shared_params, Tensor):
        shared_params = [shared_params]
    try:
        items = list(shared_params)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "shared_params: expected an iterable of tensors (e.g. model.encoder.parameters()), "
            f"got {type(shared_params).__name__}"
        ) from None
    params: list[Tensor] = []
    seen: set[int] = set()
    for k, p in enumerate(items):
        if not isinstance(p, Tensor):
            raise TypeError(f"shared_params[{k}]: expected a torch.Tensor, got {type(p).__name__}")
        if not p.requires_grad or id(p) in seen:  # frozen parameters are ignored
            continue
        if not p.is_leaf:
            raise ValueError(
                f"shared_params[{k}]: expected a leaf tensor (a parameter), got a non-leaf"
            )
        if p.is_sparse or p.layout != torch.strided:
            raise TypeError(
                f"shared_params[{k}]: expected a dense (strided) tensor, got {p.layout}"
            )
        seen.add(id(p))
        params.append(p)
    if not params:
        raise ValueError(
            "shared_params: expected at least one parameter with requires_grad=True, got none"
        )
    dtypes = sorted({str(p.dtype) for p in params})
    if len(dtypes) > 1:
        raise TypeError(
            f"shared_params: expected one dtype for all shared parameters, got {dtypes}; "
            "cast them to one dtype (use torch.autocast for mixed-precision compute)"
        )
    if params[0].dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(
            f"shared_params: expected a float16/bfloat16/float32/float64 dtype, got {params[0].dtype}"
        )
    devices = sorted({str(p.device) for p in params})
    if len(devices) > 1:
        raise ValueError(
            f"shared_params: expected all shared parameters on one device, got {devices}"
        )
    return params


def check_losses(losses: object, n_weights: int | None, n_tasks: int | None) -> list[Tensor]:
    """The n scalar losses with graphs, checked against the weights' and the buffer's n."""
    if isinstance(losses, Tensor):
        if losses.dim() != 1:
            raise TypeError(
                "losses: expected a sequence of n scalar losses (or a 1-D tensor of them), "
                f"got a tensor of shape {tuple(losses.shape)}"
            )
        losses = list(losses.unbind(0))
    try:
        items = list(losses)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"losses: expected a sequence of scalar tensors, got {type(losses).__name__}"
        ) from None
    if not items:
        raise ValueError("losses: expected at least one loss, got an empty sequence")
    for i, loss in enumerate(items):
        if not isinstance(loss, Tensor):
            raise TypeError(
                f"losses[{i}]: expected a scalar torch.Tensor, got {type(loss).__name__}"
            )
        if loss.numel() != 1:
            raise ValueError(
                f"losses[{i}]: expected a scalar loss, got shape {tuple(loss.shape)}"
            )
        if not loss.is_floating_point():
            raise TypeError(f"losses[{i}]: expected a floating-point loss, got {loss.dtype}")
        if not loss.requires_grad:
            raise ValueError(
                f"losses[{i}]: has no autograd graph (requires_grad=False), so it reaches no "
                "shared parameter; was it computed under torch.no_grad() or detached?"
            )
    n = len(items)
    if n_weights is not None and n != n_weights:
        raise ValueError(
            f"losses: expected {n_weights} losses (one per weight), got {n}"
        )
    if n_tasks is not None and n != n_tasks:
        raise ValueError(
            f"losses: expected {n_tasks} losses (the number fixed at the first call), got {n}"
        )
    return items


class TaskGradBuffer:
    """The [n, d] task-gradient rows and the [d] update of the shared parameters ``params``.

    ``rows`` is allocated by :meth:`allocate` (n fixed then); ``update`` at once.
    Both keep their storage across steps.
    """

    def __init__(self, params: list[Tensor]) -> None:
        self.params = params
        first = params[0]
        self.device, self.dtype = first.device, first.dtype
        self.numel = sum(p.numel() for p in params)
        self.shared_ids = {id(p) for p in params}
        self.n: int | None = None
        self.rows: Tensor | None = None  # [n, d]
        self.pairs: Tensor | None = None  # [2, n(n-1)/2]: the task pairs i < j
        self.update = torch.zeros(self.numel, dtype=self.dtype, device=self.device)  # [d]
        self._update_views = self.views(self.update)
        self._row_views: list[list[Tensor]] = []

    def views(self, flat: Tensor) -> list[Tensor]:
        """Views of a [d] tensor shaped as each shared parameter, in order."""
        views, offset = [], 0
        for p in self.params:
            views.append(flat[offset : offset + p.numel()].view(p.shape))
            offset += p.numel()
        return views

    def allocate(self, n: int) -> Tensor:
        """The zeroed [n, d] rows (allocated at the first call; n is fixed then)."""
        if self.rows is None:
            self.n = n
            self.rows = torch.zeros(n, self.numel, dtype=self.dtype, device=self.device)
            self._row_views = [self.views(self.rows[i]) for i in range(n)]
            self.pairs = torch.triu_indices(n, n, offset=1, device=self.device)
        else:
            self.rows.zero_()
        return self.rows

    def point_at_row(self, i: int) -> None:
        """Every shared ``.grad`` is its view of row i (the next backward fills it)."""
        for p, view in zip(self.params, self._row_views[i]):
            p.grad = view

    def point_at_update(self) -> None:
        """Every shared ``.grad`` is its view of the update (never a task row)."""
        for p, view in zip(self.params, self._update_views):
            p.grad = view
