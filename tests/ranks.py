"""The multi-process harness of the distributed tests: spawn ranks, run scenarios, collect.

``spawn(world, backend, tmp, module, table)`` starts ``world`` processes; each
joins one process group (gloo on CPU, nccl on GPU ``rank``), runs every callable
``scenario(device)`` of ``getattr(import_module(module), table)`` (a dict
name -> callable; a failure is recorded and the next scenario still runs on
every rank), tears down with the others, and writes ``{name: traceback or ""}``.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(
    rank: int, world: int, backend: str, init_file: str, result_dir: str, module: str, table: str
) -> None:
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend, init_method=f"file://{init_file}", rank=rank, world_size=world,
        timeout=timedelta(seconds=20),
    )
    results = {}
    for name, fn in getattr(importlib.import_module(module), table).items():
        try:
            fn(device)
            results[name] = ""
        except Exception:  # noqa: BLE001 -- record it; the next scenario still runs on every rank
            results[name] = traceback.format_exc()
    # Tear down together: a rank destroying its group while a peer still has gloo
    # traffic in flight can abort at exit ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
    Path(result_dir, f"{rank}.json").write_text(json.dumps(results))


def spawn(
    world: int, backend: str, tmp: Path, module: str, table: str, deadline_s: float = 90.0
) -> list[dict]:
    """Every rank's ``{scenario: traceback or ""}``, rank by rank."""
    args = (world, backend, str(tmp / "rendezvous"), str(tmp), module, table)
    context = mp.spawn(_worker, args=args, nprocs=world, join=False)
    stop = time.monotonic() + deadline_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > stop:
                raise TimeoutError(f"{world} ranks did not finish in {deadline_s} s")
    finally:
        for process in context.processes:  # only the ranks spawned here
            if process.is_alive():
                process.terminate()
    return [json.loads((tmp / f"{rank}.json").read_text()) for rank in range(world)]


def failures(results: list[dict], name: str) -> str:
    """The tracebacks of scenario ``name``, rank by rank ("" when it passed everywhere)."""
    return "\n".join(f"--- rank {rank}:\n{r[name]}" for rank, r in enumerate(results) if r[name])
