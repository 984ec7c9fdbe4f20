"""Leaf weighting: non-shared leaves get sum_i w_i dL_i/dp from the per-task backwards.

When some w_i != 1, the autograd graph of the losses is walked once per call
to find its leaves, and a tensor hook multiplying the incoming gradient by the
current task's w_i is put on each non-shared leaf for the duration of the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import Tensor


def graph_leaves(roots: Sequence[Tensor]) -> list[Tensor]:
    """The leaf tensors (AccumulateGrad nodes) reachable from the roots' graphs."""
    stack = [r.grad_fn for r in roots if r.grad_fn is not None]
    seen: set[int] = set()
    keep = []  # hold the node wrappers so that their ids stay unique during the walk
    leaves = []
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        keep.append(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            leaves.append(variable)
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    return leaves


class LeafWeights:
    """The weight of the task being backwarded, read by the hooks (1: no scaling)."""

    def __init__(self) -> None:
        self.scale = 1.0

    def hook(self, grad: Tensor) -> Tensor | None:
        return None if self.scale == 1.0 else grad * self.scale


@contextmanager
def weighted_leaves(
    losses: Sequence[Tensor], shared_ids: set[int], active: bool
) -> Iterator[LeafWeights]:
    """Hooks on the non-shared leaves of ``losses`` while the block runs (none if not ``active``).

    Set ``.scale`` of the yielded object to w_i before task i's backward; the
    hooks are removed, and the scale reset, however the block exits.
    """
    weights = LeafWeights()
    handles = []
    if active:
        for leaf in graph_leaves(losses):
            if id(leaf) not in shared_ids:
                handles.append(leaf.register_hook(weights.hook))
    try:
        yield weights
    finally:
        for handle in handles:
            handle.remove()
        weights.scale = 1.0
