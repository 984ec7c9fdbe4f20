#!/usr/bin/env python
"""One CAME-Grad step, camegrad_kernels backends vs the peers of docs/camegrad.md (§3, §7).

    PYTHONPATH=. python bench/bench_step.py --quick          # a minute: n=4, d=1e5/1e6, fp32
    PYTHONPATH=. python bench/bench_step.py                  # the full grid of docs/camegrad.md §7
    PYTHONPATH=. python bench/bench_step.py --e2e            # + training-step overhead

The implementations timed (``--methods``) and the multi-task methods they step
with (``--method``): bench/implementations.py; the grid, its checks and its
timing: bench/grid.py; the training step (``--e2e``): bench/e2e.py; machine
info, timers, tolerance and JSON: bench/harness.py.

Writes bench/results/<device>-<yyyymmdd>.json and a PNG beside it (bench/plot.py).
See bench/README.md for the fields.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grid
import harness
import peers
from e2e import e2e
from implementations import IMPLEMENTATIONS

from camegrad_kernels import methods


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help=f"comma-separated task counts (default {','.join(map(str, grid.FULL_N))})")
    p.add_argument("--d", type=lambda s: [grid.parse_number(x) for x in s.split(",")], default=None,
                   help="comma-separated sizes, e.g. 1e5,1e6 (default 1e5,1e6,1e7 [+1e8 on a GPU])")
    p.add_argument("--dtype", type=lambda s: s.split(","), default=None,
                   help="comma-separated: float32, bfloat16, float16 (default float32,bfloat16)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(IMPLEMENTATIONS),
                   help=f"comma-separated subset of {','.join(IMPLEMENTATIONS)}")
    p.add_argument("--extra", action="append", default=[], metavar="N:D:DTYPE",
                   help="one more configuration outside the grid, e.g. 4:4e6:float32 (repeatable)")
    p.add_argument("--repeats", type=int, default=20, help="minimum timed runs per method")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--target-s", type=float, default=0.5,
                   help="time short methods for at least this long (more runs than --repeats)")
    p.add_argument("--naive-repeats", type=int, default=5,
                   help="timed runs of the naive peer where n*d >= --naive-big-nd (fewer than --repeats)")
    p.add_argument("--naive-big-nd", type=float, default=1e8,
                   help="n*d from which the naive peer gets --naive-repeats runs")
    p.add_argument("--no-split", action="store_true", help="skip the gram/solve/combine split")
    p.add_argument("--mem-fraction", type=float, default=0.4,
                   help="skip configurations whose n*d*sizeof exceeds this fraction of the device memory")
    p.add_argument("--quick", action="store_true",
                   help="n=4, d=1e5,1e6, float32, 5 repeats; writes *-quick.json")
    p.add_argument("--e2e", action="store_true", help="also time the training step of python/train_multitask.py")
    p.add_argument("--e2e-only", action="store_true", help="only the --e2e part")
    p.add_argument("--e2e-dim", type=lambda s: [int(x) for x in s.split(",")], default=[64, 256],
                   help="MultiTaskRRG feature dims (64 is the script's; the shared d grows ~dim*512)")
    p.add_argument("--e2e-tasks", type=int, default=3, help="auxiliary heads K (n = K+1), as the script")
    p.add_argument("--e2e-batch", type=int, default=64)
    p.add_argument("--e2e-steps", type=int, default=30)
    p.add_argument("--e2e-threads", type=int, default=1, help="torch threads in --e2e (the script's default: 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<device>-<yyyymmdd>[-quick].json)")
    p.add_argument("--compile-cache", choices=("warm", "cold"), default="warm",
                   help="cold: a fresh TORCHINDUCTOR_CACHE_DIR, so the reported compile time is a cold compile")
    p.add_argument("--method", type=lambda s: s.split(","), default=["camegrad"],
                   help="multi-task method(s) the backends step with, side by side: "
                   f"some of {','.join(methods.METHODS)} (the peers run with camegrad only)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n = args.n or [4]
        args.d = args.d or [10**5, 10**6]
        args.dtype = args.dtype or ["float32"]
        args.repeats = min(args.repeats, 5)
        args.target_s = min(args.target_s, 0.1)
    args.dtype = args.dtype or ["float32", "bfloat16"]
    bad = [m for m in args.methods if m not in IMPLEMENTATIONS]
    if bad:
        p.error(f"--methods: unknown {bad}; expected some of {tuple(IMPLEMENTATIONS)}")
    bad = [m for m in args.method if m not in methods.METHODS]
    if bad or not args.method:
        p.error(f"--method: unknown {bad}; expected some of {methods.METHODS}")
    args.method = list(dict.fromkeys(args.method))
    for dt in args.dtype:
        if dt not in grid.DTYPES:
            p.error(f"--dtype: unknown {dt!r}; expected some of {sorted(grid.DTYPES)}")
    if args.repeats < 1 or args.naive_repeats < 1:
        p.error("--repeats/--naive-repeats: expected >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.compile_cache == "cold" and "compile" in args.methods:
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="camegrad-bench-inductor-")
    device = torch.device(args.device)
    timer = harness.Timer(device)
    configs = grid.configs(args, device)

    started = datetime.datetime.now(datetime.timezone.utc)
    info = harness.machine_info(device)
    info["loadavg_start"] = harness.loadavg()
    stamp = started.strftime("%Y%m%d")
    out = Path(args.out) if args.out else HERE / "results" / (
        f"{info['device']}-{stamp}" + ("-quick" if args.quick else "") + ".json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, flush=True)

    log(f"# {info['device']} ({info['cpu_model']}, {info['cpu_cores']} cores, torch {info['torch']}), "
        f"backends {info['available_backends']}, load {info['loadavg_start']}")
    copy = info["copy_bandwidth_large"] = harness.large_copy_bandwidth(
        device, timer, args.repeats, args.warmup, args.target_s
    )
    log(f"# copy bandwidth ({copy['bytes_copied'] >> 20} MiB buffer, read+write): {copy['gbps']:.1f} GB/s")

    result = {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]) if argv is None else " ".join(argv),
        "machine": info,
        "settings": {
            "repeats": args.repeats, "warmup": args.warmup, "target_s": args.target_s,
            "naive_repeats": args.naive_repeats, "naive_big_nd": args.naive_big_nd,
            "mem_fraction": args.mem_fraction, "seed": args.seed,
            "compile_cache": args.compile_cache, "naive_slsqp_ftol": peers.NAIVE_FTOL,
            "tolerance": harness.tolerance_settings(),
            "mtl_methods": args.method,
            "hyper": {"rho": peers.RHO, "kappa": peers.KAPPA, "nu": peers.NU, "eps": peers.EPS},
            "bytes_formula": "2*n*d*sizeof(grad) + d*sizeof(out)",
            "timing": "CUDA events" if device.type == "cuda" else "time.perf_counter",
            "cache": "hot: the same G is reused by every run (no cache flush)",
            "ground_truth": "reference.camegrad_step (float64) of G, of G.float() for bf16/fp16 inputs "
            "(reference.py keys its r-threshold on the input dtype: 0.88*max||g_i|| for bf16, "
            "vs 3.5e-3 in every backend)",
        },
        "rows": [],
        "skipped": [],
    }

    t_start = time.perf_counter()
    if not args.e2e_only:
        result.update(grid.run(configs, args, device, timer, log))

    if args.e2e or args.e2e_only:
        log("# e2e: training step of python/train_multitask.py")
        try:
            result["e2e"] = e2e(args, device, args.methods, log)
        except Exception as exc:  # noqa: BLE001
            result["e2e"] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()

    result["machine"]["loadavg_end"] = harness.loadavg()
    result["wall_s"] = time.perf_counter() - t_start
    harness.write_json(out, result)
    log(f"# wrote {out} ({result['wall_s']:.0f} s)")
    if not args.no_plot and result["rows"]:
        try:
            import plot

            for png in (plot.plot(out), plot.plot_methods(out)):
                if png:
                    log(f"# wrote {png}")
        except Exception as exc:  # noqa: BLE001
            log(f"# plot failed: {type(exc).__name__}: {exc}")
    return result


if __name__ == "__main__":
    main()
