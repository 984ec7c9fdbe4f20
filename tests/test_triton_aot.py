""".ci/check_triton_aot.py's sweep, without compiling (that is .ci/run's --quick step).

It runs in a subprocess: the check imports the kernels compiled-mode, while
this test session may have imported them under TRITON_INTERPRET=1.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("triton", reason="triton is not importable")

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / ".ci" / "check_triton_aot.py"
KERNELS = (
    "coefficients_kernel",
    "combine_kernel",
    "gram_partial_kernel",
    "gram_reduce_kernel",
    "mgda_kernel",
    "pcgrad_kernel",
)


def test_sweep_reaches_every_kernel_with_explicit_fp_fusion():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--dry-run"],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[-1].endswith(", ".join(KERNELS)), lines[-1]
    configs = lines[:-1]
    assert configs and all("fp_fusion=False" in line for line in configs)
    # The solves stop at NPAD = 64 (n > 64 takes the torch solver).
    solve_kernels = ("coefficients_kernel", "mgda_kernel", "pcgrad_kernel")
    solves = [line for line in configs if line.split()[0] in solve_kernels]
    assert solves and not any("NPAD=128" in line for line in solves)
    # NPAD = 128 Gram: only the config that fits in registers.
    big = [line for line in configs if "gram_partial" in line and "NPAD=128" in line]
    assert big and all("num_warps=8 num_stages=2" in line for line in big)
