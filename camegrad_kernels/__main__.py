"""``python -m camegrad_kernels``: one CAME-Grad step on every available backend.

Makes n task gradients with a realistic conflict level (a shared direction plus
task-specific parts, one task pulling against the others), runs the step on
each backend and prints the update norm, alpha, the duality gap, the task
cosines and the time of each backend beside the paper-literal reference.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch

from . import api, reference


def conflicting_grads(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    shared = torch.randn(d, generator=gen)
    g = 0.5 * shared + torch.randn(n, d, generator=gen)
    g[0] -= 0.8 * g[1:].mean(0)  # the "primary" task conflicts with the auxiliaries
    return g.to(dtype)


def _time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--dtype", default="float32", choices=["float16", "bfloat16", "float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    g = conflicting_grads(args.tasks, args.d, dtype, args.seed)
    torch.set_printoptions(precision=4, sci_mode=False)

    print(f"camegrad_kernels: n={args.tasks} tasks, d={args.d}, {args.dtype}")
    print(f"backends available: {', '.join(api.available_backends())}")
    expected = reference.camegrad_step(g)
    t_ref = _time(lambda: reference.camegrad_step(g), args.repeats)
    print(f"\n{'reference (paper-literal, fp64)':34s} {t_ref * 1e3:9.2f} ms   |update| = {expected.norm():.6g}")
    info = None
    for name in api.available_backends():
        device = "cuda" if name in ("cuda", "triton") and torch.cuda.is_available() else "cpu"
        if name == "triton" and device == "cpu":
            print(f"{'triton':34s} skipped (interpreter only on this machine)")
            continue
        gd = g.to(device)
        out, info = api.camegrad_step(gd, backend=name, return_info=True)
        t = _time(functools.partial(api.camegrad_step, gd, backend=name), args.repeats)
        err = float((out.double().cpu() - expected).norm() / expected.norm())
        print(f"{name:34s} {t * 1e3:9.2f} ms   |update| = {out.double().norm():.6g}   "
              f"rel.err {err:.1e}   {t_ref / t:6.1f}x the reference")
    assert info is not None
    print(f"\nalpha        = {info.alpha.cpu()}")
    print(f"coefficients = {info.coeffs.cpu()}")
    print(f"duality gap  = {float(info.duality_gap):.2e} (normalised)")
    print(f"task cosines =\n{info.cosines.cpu()}")


if __name__ == "__main__":
    main()
