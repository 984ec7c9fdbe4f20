"""The constants shared by Python and C++/CUDA are equal: read from the headers themselves."""

from __future__ import annotations

import pathlib
import re

from camegrad_kernels import solver
from camegrad_kernels.backends import cuda

CSRC = pathlib.Path(__file__).resolve().parents[1] / "csrc"


def _constants(header: str) -> dict[str, float]:
    """Every ``constexpr <type> NAME = <number>`` of a header (several per line allowed)."""
    text = (CSRC / header).read_text()
    found = {}
    for decl in re.findall(r"constexpr\s+\w+\s+([^;]+);", text):
        for name, value in re.findall(r"(\w+)\s*=\s*([-+0-9.eE]+)\b", decl):
            found[name] = float(value)
    return found


def test_solver_constants_match_solver_h():
    cpp = _constants("cpu/solver.h")
    for name in (
        "RECTIFY", "RESCALE", "FUSE", "DUAL_ITERS", "POLISH_EVERY", "POWER_ITERS",
        "SMOOTHING_DATA", "SMOOTHING_WORK", "PRECOND_FLOOR",
    ):
        assert cpp[name] == getattr(solver, name), name


def test_cuda_task_limits_match_the_header():
    cuh = _constants("cuda/camegrad_cuda.cuh")
    assert cuda.MAX_TASKS == {
        "gram": cuh["kGramMaxN"], "solve": cuh["kSolveMaxN"], "combine": cuh["kCombineMaxN"]
    }
