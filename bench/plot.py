#!/usr/bin/env python
"""Plot a bench_step.py result: ``python bench/plot.py [results.json] [--n 4] [--out x.png]``.

Rows of panels (one column per dtype):
  1. median time per step vs d at one n (log-log, p10-p90 bars), with the copy
     floor 2*n*d*sizeof + d*sizeof at the copy bandwidth measured in the same run;
  2. the same runs as % of that copy bandwidth vs d (100% = the floor);
  3. median time vs n at the largest d.
Without a path, the newest JSON in bench/results/ is plotted. The PNG goes beside it.
A run with several ``--method`` entries also gets ``<stem>-methods.png``
(:func:`plot_methods`): step time per multi-task method, grouped by backend.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

from camegrad_kernels.backends import PRIORITY

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent
# The peers, then the backends slowest first; a backend added to the registry
# (camegrad_kernels.backends.PRIORITY) is plotted too, in a default style.
ORDER = ("naive", "eager", "compile", *reversed(PRIORITY))
STYLE = {
    "naive": {"color": "tab:red", "marker": "v", "ls": ":"},
    "eager": {"color": "tab:blue", "marker": "s", "ls": "--"},
    "compile": {"color": "tab:purple", "marker": "D", "ls": "--"},
    "torch": {"color": "tab:gray", "marker": "o", "ls": "-."},
    "cpu": {"color": "tab:green", "marker": "o", "ls": "-"},
    "triton": {"color": "tab:orange", "marker": "^", "ls": "-"},
    "cuda": {"color": "tab:olive", "marker": "*", "ls": "-"},
}
for _name in PRIORITY:
    STYLE.setdefault(_name, {"color": "tab:brown", "marker": "P", "ls": "-"})
LABELS = {
    "naive": "naive: paper-literal eager + SLSQP",
    "eager": "PyTorch best-effort (eager)",
    "compile": "torch.compile(best-effort)",
    **{name: f"camegrad backend={name}" for name in PRIORITY},
}


def newest(results: Path = HERE / "results", quick: bool = False) -> Path:
    """The most recently created full-run JSON, ``<device>-<yyyymmdd>.json``.

    ``-quick`` runs count only when asked; other suffixed files (e.g. the
    ``-compile-cold`` probe) never do.
    """
    import re

    pattern = re.compile(r"-\d{8}(-quick)?$" if quick else r"-\d{8}$")
    files = [p for p in results.glob("*.json") if pattern.search(p.stem)]
    if not files:
        raise FileNotFoundError(f"no bench results (*.json) in {results}")

    def created(p: Path) -> str:
        try:
            return json.loads(p.read_text()).get("created", "")
        except (OSError, ValueError):
            return ""

    return max(files, key=lambda p: (created(p), p.stat().st_mtime))


def _fmt_d(d: float) -> str:
    e = len(str(int(d))) - 1
    m = d / 10**e
    return f"1e{e}" if abs(m - 1) < 1e-9 else f"{m:g}e{e}"


def plot(path, out=None, n: int | None = None) -> Path:
    path = Path(path)
    data = json.loads(path.read_text())
    # CAME-Grad rows only (a --method baseline's rows share the implementation names)
    rows = [
        r for r in data["rows"]
        if r.get("status") == "ok" and r.get("mtl_method", "camegrad") == "camegrad"
    ]
    if not rows:
        raise ValueError(f"{path}: no timed rows")
    dtypes = sorted({r["dtype"] for r in rows}, key=lambda s: (s != "float32", s))
    ns = sorted({r["n"] for r in rows})
    if n is None:
        n = 4 if 4 in ns else max(ns, key=lambda k: sum(r["n"] == k for r in rows))
    methods = [m for m in ORDER if any(r["method"] == m for r in rows)]

    fig, axes = plt.subplots(3, len(dtypes), figsize=(6.2 * len(dtypes), 13.5), squeeze=False)
    for col, dtype in enumerate(dtypes):
        sel = [r for r in rows if r["dtype"] == dtype]
        ax_t, ax_bw, ax_n = axes[0][col], axes[1][col], axes[2][col]

        # 1-2: vs d at this n
        at_n = [r for r in sel if r["n"] == n]
        floor = {}
        for r in at_n:
            floor[r["d"]] = r["bytes"] / (r["copy"]["gbps"] * 1e9)
        if floor:
            ds = sorted(floor)
            ax_t.plot(ds, [1e3 * floor[d] for d in ds], color="k", lw=2.5, alpha=0.35,
                      label="copy floor (same-run copy bandwidth)")
        for m in methods:
            pts = sorted((r["d"], r) for r in at_n if r["method"] == m)
            if not pts:
                continue
            ds = [d for d, _ in pts]
            med = [1e3 * r["time"]["median"] for _, r in pts]
            lo = [1e3 * (r["time"]["median"] - r["time"]["p10"]) for _, r in pts]
            hi = [1e3 * (r["time"]["p90"] - r["time"]["median"]) for _, r in pts]
            ax_t.errorbar(ds, med, yerr=[lo, hi], capsize=2, ms=5, lw=1.4, label=LABELS[m], **STYLE[m])
            ax_bw.plot(ds, [r["pct_copy_bw"] for _, r in pts], ms=5, lw=1.4, label=LABELS[m], **STYLE[m])
        ax_t.set_xscale("log")
        ax_t.set_yscale("log")
        ax_t.set_xlabel("d (parameters)")
        ax_t.set_ylabel("median time per step (ms)")
        ax_t.set_title(f"{dtype}, n = {n}: time per CAME-Grad step")
        ax_t.grid(alpha=0.3, which="both")
        ax_t.legend(fontsize=7.5, loc="upper left")

        ax_bw.axhline(100, color="k", lw=1, alpha=0.6)
        ax_bw.axhline(85, color="k", lw=0.8, ls=":", alpha=0.6)
        ax_bw.annotate("85%: the GPU goal for d >= 1e7", xy=(0.01, 86), xycoords=("axes fraction", "data"),
                       fontsize=7, va="bottom", alpha=0.7)
        ax_bw.set_xscale("log")
        ax_bw.set_yscale("log")
        ax_bw.set_xlabel("d (parameters)")
        ax_bw.set_ylabel("% of copy bandwidth  [(2nd+d)·sizeof / t]")
        ax_bw.set_title(f"{dtype}, n = {n}: bandwidth vs the copy floor")
        ax_bw.grid(alpha=0.3, which="both")
        ax_bw.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}%"))

        # 3: vs n at the largest d
        dmax = max(r["d"] for r in sel)
        at_d = [r for r in sel if r["d"] == dmax]
        fl = defaultdict(float)
        for r in at_d:
            fl[r["n"]] = r["bytes"] / (r["copy"]["gbps"] * 1e9)
        if fl:
            ks = sorted(fl)
            ax_n.plot(ks, [1e3 * fl[k] for k in ks], color="k", lw=2.5, alpha=0.35, label="copy floor")
        for m in methods:
            pts = sorted((r["n"], r) for r in at_d if r["method"] == m)
            if pts:
                ax_n.plot([k for k, _ in pts], [1e3 * r["time"]["median"] for _, r in pts],
                          ms=5, lw=1.4, label=LABELS[m], **STYLE[m])
        ax_n.set_xscale("log", base=2)
        ax_n.set_yscale("log")
        ax_n.set_xticks(sorted({r["n"] for r in at_d}))
        ax_n.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax_n.set_xlabel("n (tasks)")
        ax_n.set_ylabel("median time per step (ms)")
        ax_n.set_title(f"{dtype}, d = {_fmt_d(dmax)}: time vs number of tasks")
        ax_n.grid(alpha=0.3, which="both")
        ax_n.legend(fontsize=7.5, loc="upper left")

    m = data["machine"]
    load = m.get("loadavg_start")
    fig.suptitle(
        f"CAME-Grad step — {m['device']} — {data['created'][:10]}\n"
        f"({m['cpu_model'] if m['device_type'] == 'cpu' else m.get('gpu')}, "
        f"{m['cpu_cores']} cores, torch {m['torch']}, {m['torch_threads']} threads)"
        + (f" — load at start {load[0]:.2f}" if load else ""),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out = Path(out) if out else path.with_suffix(".png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_methods(path, out=None) -> Path | None:
    """Grouped bars: median step per --method for each backend, one panel per (dtype, n, d)."""
    path = Path(path)
    data = json.loads(path.read_text())
    order = data["settings"].get("mtl_methods") or ["camegrad"]
    rows = [r for r in data["rows"] if r.get("status") == "ok" and r["method"] in LABELS]
    if len(order) < 2 or not rows:
        return None
    configs = sorted({(r["dtype"], r["n"], r["d"]) for r in rows})
    fig, axes = plt.subplots(1, len(configs), figsize=(5.5 * len(configs), 4.2), squeeze=False)
    for ax, (dtype, n, d) in zip(axes[0], configs):
        at = [r for r in rows if (r["dtype"], r["n"], r["d"]) == (dtype, n, d)]
        backends = [b for b in ORDER if any(r["method"] == b for r in at)]
        width = 0.8 / len(order)
        for k, mtl in enumerate(order):
            times = [
                next((1e3 * r["time_s"] for r in at if r["method"] == b
                      and r.get("mtl_method", "camegrad") == mtl), 0.0)
                for b in backends
            ]
            ax.bar([i + k * width for i in range(len(backends))], times, width, label=mtl)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(backends))], backends)
        ax.set_yscale("log")  # the torch-ops reference is ~100x the native backends
        ax.set_ylabel("median ms per step (log)")
        ax.set_title(f"{dtype}, n={n}, d={_fmt_d(d)}")
        ax.legend(fontsize=8)
    m = data["machine"]
    fig.suptitle(
        f"Multi-task methods on the same passes\n{m['device']} — {data['created'][:10]}", fontsize=10
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    out = Path(out) if out else path.with_name(path.stem + "-methods.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("json", nargs="?", default=None, help="result file (default: the newest)")
    p.add_argument("--n", type=int, default=None, help="n of the vs-d panels (default 4)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    path = Path(args.json) if args.json else newest()
    print(plot(path, args.out, args.n))
    extra = plot_methods(path)
    if extra:
        print(extra)


if __name__ == "__main__":
    main()
