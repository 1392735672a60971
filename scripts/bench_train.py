"""End-to-end Table 2 measurement (part of `make bench`): time per LLaMA training iteration with
AdamW and with AM-AdamW, AM-AdamW's overhead in percent, and tokens per second.

Every row trains its own copy of the same model (same initialisation, same random-token
batches) through the trainer's own step (`amm.trainer.take_step`: zero_grad, forward and
backward under autocast, optimizer step). Rows run in interleaved rounds of a few iterations
each, so drifts of a shared machine hit all rows alike; a row's time is the median iteration.
On CUDA the baseline is fused AdamW with bf16 weights and autocast (the setting of
../shared/anchors); on the CPU, foreach AdamW in fp32. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
from bench_optim import run_meta, sync, write_report
from hydra.utils import instantiate
from omegaconf import OmegaConf

from amm.optim import build_optimizer
from amm.trainer import autocast_context, take_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    cfg = OmegaConf.load(CONFIGS / f"llama_{size}.yaml")
    cfg.tf32 = True
    return instantiate(cfg, info={"vocab_size": 32000}).to(device, dtype)


def rows_for(device: torch.device) -> list[tuple[str, str, dict]]:
    """(row name, optimizer name, options); the first row is the baseline."""
    if device.type == "cuda":
        return [
            ("AdamW (torch, fused)", "adamw", dict(fused=True)),
            ("AM-AdamW (fused, global beta)", "am_adamw", dict(fused=True)),
            ("AM-AdamW (fused, per-tensor beta)", "am_adamw", dict(fused=True, beta_scope="per-tensor")),  # noqa: E501
            ("AM-AdamW (foreach, global beta)", "am_adamw", dict(foreach=True)),
        ]  # fmt: skip
    return [
        ("AdamW (torch, foreach)", "adamw", dict(foreach=True)),
        ("AM-AdamW (foreach, global beta)", "am_adamw", dict(foreach=True)),
        ("AM-AdamW (foreach, per-tensor beta)", "am_adamw", dict(foreach=True, beta_scope="per-tensor")),  # noqa: E501
    ]  # fmt: skip


def bench_size(size: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = autocast_context("bf16" if device.type == "cuda" else None, device)
    torch.manual_seed(0)
    base = build_model(size, device, dtype)
    n_params = sum(p.numel() for p in base.parameters())
    runs = {}
    for name, opt_name, options in rows_for(device):
        model = copy.deepcopy(base)
        opt = build_optimizer(model, opt_name, lr=1e-3, weight_decay=0.0, **options)
        runs[name] = (model, opt, [])
    del base
    gen = torch.Generator().manual_seed(0)
    batches = [
        {"input_ids": torch.randint(0, 32000, (args.batch, args.seq), generator=gen).to(device)}
        for _ in range(args.block)
    ]
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocations, kernels)
        for model, opt, times in runs.values():
            for batch in batches:
                sync(device)
                start = time.perf_counter()
                take_step(model, opt, [batch], autocast, None, 1)
                sync(device)
                if round_ > 0:
                    times.append(time.perf_counter() - start)
    baseline = statistics.median(next(iter(runs.values()))[2])
    out = []
    for name, (_, _, times) in runs.items():
        t = statistics.median(times)
        row = dict(size=size, params=n_params, optimizer=name, s_per_iter=t)
        row.update(overhead_pct=100 * (t / baseline - 1), tokens_per_s=args.batch * args.seq / t)
        out.append(row)
        print(
            f"{size:>5} {n_params / 1e6:7.1f}M  {name:36s} {t * 1e3:9.1f} ms/iter  "
            f"{row['tokens_per_s']:10.0f} tok/s  {row['overhead_pct']:+6.2f} %",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--sizes", nargs="+", default=["60m", "350m"] if cuda else ["9m", "20m"])
    # CUDA: 256 sequences of 256 tokens, the batch of ../shared/anchors' tokens/s
    parser.add_argument("--batch", type=int, default=256 if cuda else 4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=4, help="iterations per row per round")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench_train"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [r for size in args.sizes for r in bench_size(size, args, device)]

    meta = run_meta(
        device,
        batch=f"{args.batch} x {args.seq} tokens",
        iterations_per_row=args.rounds * args.block,
    )
    lines = [
        "| model | parameters | optimizer | time/iter (ms) | tokens/s | overhead vs first row |",
        "|---|---|---|---|---|---|",
        *(
            f"| LLaMA-{r['size']} | {r['params'] / 1e6:.1f} M | {r['optimizer']} | "
            f"{r['s_per_iter'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['overhead_pct']:+.2f} % |"
            for r in rows
        ),
    ]
    write_report(
        args.out / f"train_step_{device.type}",
        "Table 2, end to end: LLaMA training iteration, AdamW vs AM-AdamW",
        lines,
        "Median iteration of interleaved rounds (scripts/bench_train.py).",
        meta,
        rows,
    )


if __name__ == "__main__":
    main()
