"""Optimizer-step benchmark on LLaMA-shaped tensor lists (`make bench-optim`, part of `make bench`).

Times one `optimizer.step()` (gradients already set) of torch's AdamW / SGD(momentum) and of
AM-AdamW / AM-SGD, and reports each row's ratio to its torch baseline and its fraction of the
bandwidth limit: the bytes the algorithm must move (passes over the 4-byte state, below)
divided by the measured bandwidth (an in-place a += b as large as the list), over the
measured time.

Minimal passes per parameter: AdamW reads x, g, m, v and writes x, m, v (7); SGD-momentum reads
x, g, d and writes x, d (5); global-beta AM needs a sums pass before the update pass: AM-AdamW
reads g, m, v, then x, g, m, v and writes x, m, v (10); AM-SGD reads g, d, then x, g, d and
writes x, d (7). Weight decay is 0 in every row (with decoupled decay, AM-AdamW's sums pass
also reads x for <g, x>: 11).

On the CPU, fused=True rows ("compiled") run the AM step's two passes compiled by
torch.compile (amm.optim._compiled); their first step includes the compilation.

The optimizers of one family share the parameters and gradients and are timed in interleaved
rounds (each round steps every optimizer once), so slow phases of a shared machine hit all
rows alike; a row's time is its best round. A benchmark, not a test: numbers depend on the
machine. Writes a markdown table and a JSON record (command, git SHA, date, machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch._inductor.config

from amm.optim import AMSGD, AMAdamW

# (hidden, intermediate, layers, vocab): about 10 M and 100 M parameters (the 100 M one is the
# paper's LLaMA-100M); the 1.34 B list of ../shared/anchors is LLaMA-1B's (2048, 5461, 24, 32000).
SIZES = {
    "10M": (256, 688, 4, 12000),
    "100M": (640, 1708, 12, 32000),
    "1B": (2048, 5461, 24, 32000),
}


def llama_shapes(hidden: int, inter: int, layers: int, vocab: int) -> list[tuple[int, ...]]:
    per_layer = [(hidden, hidden)] * 4 + [(inter, hidden)] * 2 + [(hidden, inter)] + [(hidden,)] * 2
    return [(vocab, hidden)] + per_layer * layers + [(hidden,), (vocab, hidden)]


def make_params(shapes, device, dtype) -> list[torch.nn.Parameter]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((torch.randn(s, generator=gen) * 0.02).to(device, dtype))
        p.grad = (torch.randn(s, generator=gen) * 1e-3).to(device, dtype)
        params.append(p)
    return params


Factory = Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]
# family -> (row name, minimal passes, factory); the first row of a family is its baseline
FAMILIES: dict[str, list[tuple[str, int, Factory, str]]] = {
    "adam": [
        ("AdamW (torch, foreach)", 7, lambda p: torch.optim.AdamW(p, 1e-3, (0.9, 0.99), weight_decay=0, foreach=True), "any"),  # noqa: E501
        ("AdamW (torch, fused)", 7, lambda p: torch.optim.AdamW(p, 1e-3, (0.9, 0.99), weight_decay=0, fused=True), "any"),  # noqa: E501
        ("AM-AdamW (foreach, global beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, foreach=True), "any"),  # noqa: E501
        ("AM-AdamW (foreach, per-tensor beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, foreach=True, beta_scope="per-tensor"), "any"),  # noqa: E501
        ("AM-AdamW (compiled, global beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True), "cpu"),  # noqa: E501
        ("AM-AdamW (compiled, global, lam_metric=scalar)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True, lam_metric="scalar"), "cpu"),  # noqa: E501
        ("AM-AdamW (compiled, per-tensor beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True, beta_scope="per-tensor"), "cpu"),  # noqa: E501
        ("AM-AdamW (fused, global beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True), "cuda"),  # noqa: E501
        ("AM-AdamW (fused, global, nonfinite=off)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True, nonfinite="off"), "cuda"),  # noqa: E501
        ("AM-AdamW (fused, per-tensor beta)", 10, lambda p: AMAdamW(p, 1e-3, weight_decay=0, fused=True, beta_scope="per-tensor"), "cuda"),  # noqa: E501
    ],
    "sgd": [
        ("SGD momentum (torch, foreach)", 5, lambda p: torch.optim.SGD(p, 1e-2, momentum=0.9, dampening=0.9, foreach=True), "any"),  # noqa: E501
        ("SGD momentum (torch, fused)", 5, lambda p: torch.optim.SGD(p, 1e-2, momentum=0.9, dampening=0.9, fused=True), "any"),  # noqa: E501
        ("AM-SGD (foreach, global beta)", 7, lambda p: AMSGD(p, 1e-2, foreach=True), "any"),
        ("AM-SGD (foreach, global, nonfinite=off)", 7, lambda p: AMSGD(p, 1e-2, foreach=True, nonfinite="off"), "any"),  # noqa: E501
        ("AM-SGD (compiled, global beta)", 7, lambda p: AMSGD(p, 1e-2, fused=True), "cpu"),
        ("AM-SGD (compiled, per-tensor beta)", 7, lambda p: AMSGD(p, 1e-2, fused=True, beta_scope="per-tensor"), "cpu"),  # noqa: E501
        ("AM-SGD (fused, global beta)", 7, lambda p: AMSGD(p, 1e-2, fused=True), "cuda"),
        ("AM-SGD (fused, global, nonfinite=off)", 7, lambda p: AMSGD(p, 1e-2, fused=True, nonfinite="off"), "cuda"),  # noqa: E501
    ],
}  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def copy_bandwidth(device: torch.device, numel: int) -> float:
    """Bytes per second of an in-place `a += b` over `numel` floats (reads a, b, writes a: the
    access pattern of the optimizers' in-place updates; a copy to a fresh buffer would also pay
    the CPU's read-for-ownership of the destination). Best of 10."""
    a = torch.randn(numel, device=device)
    b = torch.randn(numel, device=device)
    best = float("inf")
    for _ in range(12):
        sync(device)
        start = time.perf_counter()
        a.add_(b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 3 * a.numel() * a.element_size() / best


def time_family(
    rows, params, rounds: int, device: torch.device
) -> tuple[dict[str, float], dict[str, float]]:
    """Best step time per optimizer over interleaved rounds (after 3 warm-up steps each), and
    each optimizer's first step (state allocation; for the compiled rows the compilation)."""
    opts = {}
    for name, _, factory, where in rows:
        if where not in ("any", device.type):
            continue
        try:
            opts[name] = factory(params)
        except (RuntimeError, ValueError) as err:  # e.g. a fused path this torch lacks
            print(f"skipped {name}: {err}", file=sys.stderr)
    first = {}
    for name, opt in opts.items():
        sync(device)
        start = time.perf_counter()
        opt.step()  # state allocation, kernel compilation
        sync(device)
        first[name] = time.perf_counter() - start
        for _ in range(2):  # the first adaptive step
            opt.step()
    sync(device)
    best = dict.fromkeys(opts, float("inf"))
    for _ in range(rounds):
        for name, opt in opts.items():
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, first


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def git_dirty() -> bool | None:
    """Whether tracked files differ from the commit (the record's code is then not git_sha's)."""
    try:
        out = subprocess.check_output(["git", "status", "--porcelain", "-uno"], text=True)
    except Exception:
        return None
    return bool(out.strip())


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.processor() or platform.machine()
    return f"{platform.node()} {cpu}, {torch.get_num_threads()} threads"


def run_meta(device: torch.device, **extra: object) -> dict[str, object]:
    """What a benchmark record says about its run: command, git SHA, date, machine, torch."""
    return dict(
        command=" ".join([Path(sys.executable).name] + sys.argv),
        git_sha=git_sha(),
        git_dirty=git_dirty(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine(device),
        device=str(device),
        torch=torch.__version__,
        **extra,
    )


def write_report(
    stem: Path, title: str, lines: list[str], note: str, meta: dict, rows: list[dict]
) -> None:
    """<stem>.md (title, the table `lines`, a note, the run's meta) and <stem>.json (meta and
    rows); prints the table."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".md").write_text(
        f"# {title}\n\n"
        + "\n".join(lines)
        + f"\n\n{note}\n\n"
        + "\n".join(f"- {k}: `{v}`" for k, v in meta.items())
        + "\n"
    )
    stem.with_suffix(".json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"], choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench_optim"))
    args = parser.parse_args()
    device = torch.device(args.device)
    # the compile time in the table is a cold one (no inductor/FX cache from an earlier run)
    torch._inductor.config.force_disable_caches = True

    rows = []
    for size in args.sizes:
        shapes = llama_shapes(*SIZES[size])
        n = sum(torch.Size(s).numel() for s in shapes)
        # over as many floats as the list holds: the cache regime of one pass over it
        bandwidth = copy_bandwidth(device, n)
        print(f"{size}: bandwidth {bandwidth / 1e9:.1f} GB/s (a += b, read + write)", flush=True)
        params = make_params(shapes, device, torch.float32)
        for family in FAMILIES.values():
            times, first = time_family(family, params, args.rounds, device)
            baseline = times.get(family[0][0])
            fused = times.get(family[1][0])  # torch's fused step
            for name, passes, _, _ in family:
                if name not in times:
                    continue
                t = times[name]
                limit = passes * n * 4 / bandwidth
                row = dict(size=size, params=n, tensors=len(shapes), optimizer=name, ms=t * 1e3)
                row.update(ratio=t / baseline, passes=passes, limit_ms=limit * 1e3)
                row.update(vs_fused=t / fused if fused else None, first_step_s=first[name])
                row.update(bandwidth_fraction=limit / t, copy_GBps=round(bandwidth / 1e9, 1))
                rows.append(row)
                print(
                    f"{size:>5} {n / 1e6:7.1f}M  {name:42s} {t * 1e3:9.2f} ms  "
                    f"x{t / baseline:.2f}  {100 * limit / t:5.1f}% of bandwidth  "
                    f"first step {first[name]:.1f} s",
                    flush=True,
                )
        del params

    meta = run_meta(device, rounds=args.rounds)
    lines = [
        "| size | parameters | optimizer | step (ms) | ratio to first row of its family "
        "| ratio to torch's fused | minimal passes | bandwidth limit (ms) | fraction of the limit "
        "| first step (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['size']} | {r['params'] / 1e6:.1f} M | {r['optimizer']} | {r['ms']:.2f} | "
            f"{r['ratio']:.2f} | {r['vs_fused']:.2f} | {r['passes']} | {r['limit_ms']:.2f} | "
            f"{100 * r['bandwidth_fraction']:.0f} % | {r['first_step_s']:.2f} |"
            for r in rows
        ),
    ]
    note = (
        "Bandwidth limit: minimal passes x parameters x 4 bytes / the bandwidth of an "
        "in-place a += b as large as the list (read + write; "
        + ", ".join(dict.fromkeys(f"{r['size']}: {r['copy_GBps']} GB/s" for r in rows))
        + "). On a CPU, caches can make a row beat this limit. First step: state allocation, "
        "and for the compiled rows torch.compile's compilation with its caches off (the "
        "per-tensor row reuses the global row's compiled code: same tensors, same flags). "
        "See scripts/bench_optim.py."
    )
    write_report(
        args.out / f"optim_step_{device.type}",
        f"Optimizer step time (best of {args.rounds} interleaved rounds)",
        lines,
        note,
        meta,
        rows,
    )


if __name__ == "__main__":
    main()
