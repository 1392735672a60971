"""Where the compiled CPU step's time goes (`make bench-profile`; issue 28's profile).

For AM-AdamW and AM-SGD with fused=True on the CPU (amm.optim._compiled), one process per run
times, over interleaved rounds (best round per row):

- the whole `optimizer.step()` and torch's fused baseline (AdamW / SGD momentum);
- the step with pass 2 (the update) made a no-op, with pass 1 (the sums) replaced by its
  cached result, and with both: the step's bookkeeping alone (gather, hyper-parameters, the
  beta formula, the non-finite check) and each pass as it runs inside the step;
- each pass called alone, back to back, and two floors: a compiled pass that only reads and
  sums pass 1's arrays (the memory traffic pass 1 cannot avoid), and the same read with the
  per-element sqrt and division of P^-1 (AM-AdamW).

Replacing a pass by a no-op changes the step's result: the numbers are times, never results.
A profile, not a test. Writes results/bench_optim/profile_<device>.md and .json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_optim import SIZES, llama_shapes, make_params, run_meta, write_report

from amm.optim import AMSGD, AMAdamW


def _read_floor(gs: list[torch.Tensor], ds: list[torch.Tensor], vs: list[torch.Tensor]):
    """Pass 1's unavoidable traffic: read g, d (and v) once, two sums per tensor."""
    out = []
    for i, (g, d) in enumerate(zip(gs, ds)):
        tail = vs[i].sum() if vs else (d * d).sum()
        out.append(torch.stack([(g * d).sum(), tail]))
    return torch.stack(out)


def _sqrt_div_floor(gs: list[torch.Tensor], ds: list[torch.Tensor], vs: list[torch.Tensor]):
    """The read floor plus AM-AdamW's per-element sqrt and division (P^-1 = f / (sqrt v + e))."""
    return torch.stack(
        [(g * d / ((0.99 * v + 0.01 * g * g).sqrt() + 1e-8)).sum() for g, d, v in zip(gs, ds, vs)]
    )  # noqa: E501


def best_of(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best time (ms) per function over interleaved rounds of 5 calls each."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(5):
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return {k: v * 1e3 for k, v in best.items()}


def profile(family: str, size: str, rounds: int) -> dict[str, float]:
    params = make_params(llama_shapes(*SIZES[size]), torch.device("cpu"), torch.float32)
    if family == "AM-AdamW":
        opt: torch.optim.Optimizer = AMAdamW(params, 1e-3, weight_decay=0, fused=True)
        base = torch.optim.AdamW(params, 1e-3, (0.9, 0.99), weight_decay=0, fused=True)
    else:
        opt = AMSGD(params, 1e-2, fused=True)
        base = torch.optim.SGD(params, 1e-2, momentum=0.9, dampening=0.9, fused=True)
    for _ in range(3):  # compile, then the first adaptive steps
        opt.step()
        base.step()
    passes = opt._compiled_passes()  # the CompiledPasses the step calls (amm.optim._compiled)
    sums, update = passes.sums, passes.update
    seen: dict[str, tuple] = {}

    def record_sums(*args):
        seen["sums"], seen["rows"] = args, sums(*args)
        return seen["rows"]

    def record_update(*args):
        seen["update"] = args
        update(*args)

    passes.sums, passes.update = record_sums, record_update  # type: ignore[method-assign]
    opt.step()

    def step_with(sums_fn, update_fn) -> Callable[[], object]:
        def run():
            passes.sums, passes.update = sums_fn, update_fn  # type: ignore[method-assign]
            opt.step()

        return run

    def cached(*_):
        return seen["rows"].clone()

    def noop(*_):
        return None

    gs, ds, vs = seen["sums"][0][0], seen["sums"][0][1], seen["sums"][0][2]
    floors = {"read": torch.compile(_read_floor, fullgraph=True, dynamic=False)}
    if family == "AM-AdamW":
        floors["read+sqrt+div"] = torch.compile(_sqrt_div_floor, fullgraph=True, dynamic=False)
    else:
        vs = []
    with torch.no_grad():
        fns: dict[str, Callable[[], object]] = {
            "baseline": base.step,
            "step": step_with(sums, update),
            "step, update no-op": step_with(sums, noop),
            "step, sums cached": step_with(cached, update),
            "bookkeeping": step_with(cached, noop),
            "pass 1 alone": lambda: sums(*seen["sums"]),
            "pass 2 alone": lambda: update(*seen["update"]),
        }
        for name, floor in floors.items():
            floor(gs, ds, vs)  # compile outside the timing
            fns[f"floor: {name}"] = lambda f=floor: f(gs, ds, vs)
        times = best_of(fns, rounds)
    passes.sums, passes.update = sums, update  # type: ignore[method-assign]
    times["pass 1 in step"] = times["step, update no-op"] - times["bookkeeping"]
    times["pass 2 in step"] = times["step, sums cached"] - times["bookkeeping"]
    return times


ORDER = [
    ("baseline", "torch's fused step"),
    ("step", "whole step"),
    ("bookkeeping", "bookkeeping (both passes no-ops)"),
    ("pass 1 in step", "pass 1, sums (step - bookkeeping, update no-op)"),
    ("pass 2 in step", "pass 2, update (step - bookkeeping, sums cached)"),
    ("pass 1 alone", "pass 1 alone, back to back"),
    ("pass 2 alone", "pass 2 alone, back to back"),
    ("floor: read", "floor of pass 1: read its arrays, sum"),
    ("floor: read+sqrt+div", "floor of pass 1 + sqrt and division"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"], choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("results/bench_optim"))
    args = parser.parse_args()
    results = {
        (fam, size): profile(fam, size, args.rounds)
        for size in args.sizes
        for fam in ("AM-AdamW", "AM-SGD")
    }
    cols = list(results)
    lines = [
        "| ms (x baseline) | " + " | ".join(f"{f} {s}" for f, s in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for key, label in ORDER:
        cells = []
        for col in cols:
            t = results[col].get(key)
            cells.append("" if t is None else f"{t:.2f} ({t / results[col]['baseline']:.2f}x)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    note = (
        "Global beta, weight decay 0, fp32, LLaMA-shaped tensor lists (scripts/bench_optim.py "
        "SIZES); best of interleaved rounds. 'in step' rows subtract the bookkeeping from a step "
        "whose other pass is a no-op (AM-AdamW: pass 1 reads g, d, v; pass 2 reads g, d, v, x "
        "and writes d, v, x; AM-SGD: pass 1 reads g, d; pass 2 reads g, d, x and writes d, x)."
    )
    rows = [dict(family=f, size=s, **results[(f, s)]) for f, s in cols]
    meta = run_meta(torch.device("cpu"), sizes=args.sizes, rounds=args.rounds)
    title = "Where the compiled CPU step's time goes"
    write_report(args.out / "profile_cpu", title, lines, note, meta, rows)


if __name__ == "__main__":
    main()
