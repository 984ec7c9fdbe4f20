#!/usr/bin/env python
"""Print a markdown table of the newest bench_step.py result, for the README.

    python bench/readme_table.py                      # newest bench/results/*.json (not -quick)
    python bench/readme_table.py FILE.json --n 4      # one file, only n = 4
    python bench/readme_table.py --dtype float32

Columns: median ms per step of each method, the copy floor
(2*n*d*sizeof + d*sizeof at the copy bandwidth of the same run), our fastest
backend's % of that bandwidth, and its speedup over each peer
(t_peer / t_ours; "disagrees"/"error"/"-" where a peer has no time).

A run with several ``--method`` entries also gets :func:`methods_table`: the
multi-task methods side by side per backend (step, and the solve alone).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plot import newest

PEERS = ("naive", "eager", "compile")
OURS = ("cuda", "triton", "cpu", "torch")  # preference when picking "ours"
HEAD = {
    "naive": "naive",
    "eager": "PyTorch",
    "compile": "compile",
    "cuda": "cuda",
    "triton": "triton",
    "cpu": "cpu",
    "torch": "torch",
}


def fmt_d(d: int) -> str:
    e = len(str(int(d))) - 1
    m = d / 10**e
    return f"1e{e}" if abs(m - 1) < 1e-9 else f"{m:g}e{e}"


def fmt_ms(t: float) -> str:
    ms = 1e3 * t
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def cell(row) -> str:
    if row is None:
        return "-"
    if row.get("status") == "ok":
        return fmt_ms(row["time_s"]) + ("\\*" if row.get("reduced_repeats") else "")
    return row.get("status", "-")


def table(data: dict, ns=None, dtypes=None, cold: dict | None = None) -> str:
    rows = [r for r in data["rows"] if r.get("mtl_method", "camegrad") == "camegrad"]
    configs = []
    for r in rows:
        key = (r["dtype"], r["n"], r["d"])
        if key not in configs:
            configs.append(key)
    configs.sort(key=lambda k: (k[0] != "float32", k[0], k[1], k[2]))
    if ns:
        configs = [k for k in configs if k[1] in ns]
    if dtypes:
        configs = [k for k in configs if k[0] in dtypes]
    present = {r["method"] for r in rows if r.get("status") not in (None, "unavailable")}
    methods = [m for m in PEERS + OURS if m in present]
    ours = [m for m in OURS if m in present and m != "torch"] or ["torch"]
    ours = [m for m in ours if m in present]

    m = data["machine"]
    what = m.get("gpu") if m["device_type"] == "cuda" else f"{m['cpu_model']}, {m['cpu_cores']} cores"
    load = m.get("loadavg_start")
    lines = [
        f"**{m['device']}** ({what}; torch {m['torch']}) — {data['created'][:10]}"
        + (f", load {load[0]:.2f} at start" if load else ""),
        "",
        (
            "Median ms per step (p10-p90 in the JSON); *floor* = bytes / copy bandwidth of the same"
            f" run; % BW and speedups are for {'/'.join(ours)}."
        ),
        "",
    ]
    head = ["dtype", "n", "d", "floor"] + [HEAD[x] for x in methods]
    for o in ours:
        head += [f"{o} % BW"] + [f"{o} vs {HEAD[p]}" for p in PEERS if p in methods]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["--:"] * (len(head) - 3)) + "|")
    for dtype, n, d in configs:
        by = {r["method"]: r for r in rows if (r["dtype"], r["n"], r["d"]) == (dtype, n, d)}
        any_row = next(iter(by.values()))
        floor = any_row["bytes"] / (any_row["copy"]["gbps"] * 1e9)
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}
        cells = [short.get(dtype, dtype), str(n), fmt_d(d), fmt_ms(floor)]
        cells += [cell(by.get(x)) for x in methods]
        for o in ours:
            r = by.get(o)
            ok = r is not None and r.get("status") == "ok"
            cells.append(f"{r['pct_copy_bw']:.0f}%" if ok else "-")
            for p in PEERS:
                if p not in methods:
                    continue
                s = r.get("speedup_over", {}).get(p) if ok else None
                cells.append(f"{s:.2f}x" if s is not None else cell(by.get(p)) if by.get(p) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if any(r.get("reduced_repeats") for r in rows):
        lines += [
            "",
            (
                "\\* fewer timed runs (naive peer at large n·d: "
                f"--naive-repeats {data['settings']['naive_repeats']})."
            ),
        ]
    comp = data.get("compile") or {}
    if comp:
        parts = [f"{k}: {v['first_call_s']:.0f} s (inductor cache hits {v.get('fxgraph_cache_hit')}, "
                 f"misses {v.get('fxgraph_cache_miss')})" for k, v in comp.items()]
        lines += ["", "torch.compile first call (compile, dynamic shapes, once per dtype): " + "; ".join(parts) + "."]
    if cold and cold.get("compile"):
        parts = [f"{k}: {v['first_call_s']:.0f} s" for k, v in cold["compile"].items()]
        load = cold["machine"].get("loadavg_start")
        lines += ["", "Cold torch.compile (fresh inductor cache, separate run"
                  + (f", load {load[0]:.2f}" if load else "") + "): " + "; ".join(parts) + "."]
    if data.get("compile_errors"):
        lines += ["", "torch.compile failed: " + "; ".join(f"{k}: {v}" for k, v in data["compile_errors"].items())]
    big = m.get("copy_bandwidth_large")
    if big:
        lines += ["", f"Copy bandwidth of a {big['bytes_copied'] >> 20} MiB buffer: {big['gbps']:.1f} GB/s (read+write)."]
    e2e = data.get("e2e")
    if e2e and e2e.get("configs"):
        lines += [
            "",
            (
                "End to end (python/train_multitask.py step, "
                f"n = {e2e['tasks_n']}, batch {e2e['batch']}, {e2e['threads']} thread(s)):"
            ),
            "",
            (
                "| d shared | backend | linear, 1 backward (ms) | linear, n backwards (ms)"
                " | CAME-Grad (ms) | overhead vs 1-bwd linear | vs n-bwd linear"
                " | camegrad_step alone |"
            ),
            "|--:|---|--:|--:|--:|--:|--:|--:|",
        ]
        for c in e2e["configs"]:
            for name, o in c.get("overhead", {}).items():
                lines.append(
                    f"| {c['d_shared']:,} | {name} | {1e3 * o['linear_1bwd_s']:.2f} | {1e3 * o['linear_cg_s']:.2f} "
                    f"| {1e3 * o['camegrad_step_s']:.2f} | {o['overhead_vs_linear_1bwd_pct_of_step']:.0f}% of step "
                    f"| {o['overhead_vs_linear_cg_pct_of_step']:.1f}% | {1e3 * o['kernel_s']:.3f} ms "
                    f"({o['kernel_pct_of_step']:.1f}%) |"
                )
    return "\n".join(lines)


def methods_table(data: dict) -> str:
    """Step (and solve) ms of each --method per backend and configuration; "" if one method."""
    order = data["settings"].get("mtl_methods") or ["camegrad"]
    if len(order) < 2:
        return ""
    rows = [r for r in data["rows"] if r["method"] in OURS and r.get("status") == "ok"]
    keys = []
    for r in rows:
        key = (r["method"], r["dtype"], r["n"], r["d"])
        if key not in keys:
            keys.append(key)
    lines = [
        "Multi-task methods on the same passes: median ms per step (solve alone in brackets).",
        "",
        "| backend | dtype | n | d | " + " | ".join(order) + " |",
        "|---|---|--:|--:|" + "--:|" * len(order),
    ]
    for backend, dtype, n, d in keys:
        cells = [backend, dtype, str(n), fmt_d(d)]
        for mtl in order:
            r = next(
                (x for x in rows if (x["method"], x["dtype"], x["n"], x["d"], x.get("mtl_method",
                 "camegrad")) == (backend, dtype, n, d, mtl)),
                None,
            )
            if r is None:
                cells.append("-")
                continue
            solve = r.get("split", {}).get("solve")
            cells.append(fmt_ms(r["time_s"]) + (f" ({fmt_ms(solve['median'])})" if solve else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="?", default=None)
    p.add_argument("--n", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--dtype", type=lambda s: s.split(","), default=None)
    p.add_argument("--quick", action="store_true", help="consider -quick runs for 'newest'")
    args = p.parse_args(argv)
    path = Path(args.json) if args.json else newest(quick=args.quick)
    data = json.loads(path.read_text())
    cold_path = path.with_name(path.stem + "-compile-cold.json")
    cold = json.loads(cold_path.read_text()) if cold_path.exists() else None
    try:
        shown = path.resolve().relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        shown = path
    print(f"<!-- generated by bench/readme_table.py from {shown} -->")
    print(table(data, args.n, args.dtype, cold))
    extra = methods_table(data)
    if extra:
        print("\n" + extra)


if __name__ == "__main__":
    main()
