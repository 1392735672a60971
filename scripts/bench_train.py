"""End-to-end Table 2 measurement (part of `make bench`): time per LLaMA training iteration with
AdamW and with AM-AdamW, AM-AdamW's overhead in percent, and tokens per second.

Every row trains its own copy of the same model (same initialisation, same random-token
batches). Trainer rows go through the trainer's own step (`amm.trainer.take_step`: zero_grad,
forward and backward under autocast, gradient clipping, optimizer step); "bare loop" rows run
the same model, batches and optimizer in a loop as plain as nanoGPT's (forward, loss,
backward, clip, step, zero_grad), so `trainer_vs_bare` is what the trainer's step costs
(`trainer_vs_bare_rounds`: per round, with the mean's 95 % interval). Rows run in interleaved
rounds of a few iterations each, every other round in reverse order, so drifts of a shared
machine hit all rows alike and no row always runs first; a row's time is the median
iteration, and `overhead_pct_rounds` holds its overhead over the first row in each round (the
claims report's interval for claim 12). On CUDA the baseline is fused AdamW with bf16 weights
and autocast (the setting of ../shared/anchors); on the CPU, fused AdamW in fp32, and
fused=True AM-AdamW is the compiled step (amm.optim._compiled). The "char" size is the
reduced LLM configuration (configs/model/llama_char.yaml, 12 x 64 tokens, 65 characters).
A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from bench_optim import run_meta, sync, write_report
from hydra.utils import instantiate
from omegaconf import OmegaConf

from amm.optim import build_optimizer
from amm.trainer import autocast_context, take_step

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"


BARE = ", bare loop"  # the suffix of a bare-loop row; its trainer twin has the name without it
CHAR_VOCAB = 65  # the Shakespeare characters (the reduced LLM configuration)
GRAD_CLIP = 1.0  # the LLM artifacts' trainer.grad_clip


def build_model(size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    cfg = OmegaConf.load(CONFIGS / f"llama_{size}.yaml")
    cfg.tf32 = True
    return instantiate(cfg, info={"vocab_size": vocab(size)}).to(device, dtype)


def vocab(size: str) -> int:
    return CHAR_VOCAB if size == "char" else 32000


def rows_for(device: torch.device) -> list[tuple[str, str, dict]]:
    """(row name, optimizer name, options); the first row is the baseline."""
    fused_am = "fused" if device.type == "cuda" else "compiled"
    return [
        ("AdamW (torch, fused)", "adamw", dict(fused=True)),
        ("AdamW (torch, fused)" + BARE, "adamw", dict(fused=True)),
        (f"AM-AdamW ({fused_am}, per-tensor beta)", "am_adamw", dict(fused=True, beta_scope="per-tensor")),  # noqa: E501
        (f"AM-AdamW ({fused_am}, per-tensor beta)" + BARE, "am_adamw", dict(fused=True, beta_scope="per-tensor")),  # noqa: E501
        (f"AM-AdamW ({fused_am}, global beta)", "am_adamw", dict(fused=True)),
        ("AdamW (torch, foreach)", "adamw", dict(foreach=True)),
        ("AM-AdamW (foreach, per-tensor beta)", "am_adamw", dict(foreach=True, beta_scope="per-tensor")),  # noqa: E501
    ]  # fmt: skip


def bare_step(model: Any, opt: torch.optim.Optimizer, batch: dict, autocast) -> None:
    """One iteration as nanoGPT's train.py writes it: forward, loss, backward, clip, step."""
    ids = batch["input_ids"]
    with autocast:
        loss = model.lm(input_ids=ids, labels=ids).loss  # transformers' LlamaForCausalLM
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    opt.step()
    opt.zero_grad(set_to_none=True)


def mean_interval(values: list[float]) -> list[float]:
    """The mean's 95 % t-interval over rounds."""
    from scipy import stats  # scikit-learn's dependency

    mean, n = statistics.fmean(values), len(values)
    if n < 2:
        return [mean, mean]
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / n**0.5
    return [mean - half, mean + half]


def bench_size(size: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    autocast = autocast_context("bf16" if device.type == "cuda" else None, device)
    torch.manual_seed(0)
    base = build_model(size, device, dtype)
    n_params = sum(p.numel() for p in base.parameters())
    runs = {}
    for name, opt_name, options in rows_for(device):
        model = copy.deepcopy(base)
        opt = build_optimizer(model, opt_name, lr=1e-3, weight_decay=1e-4, **options)
        runs[name] = (model, opt, [])
    del base
    gen = torch.Generator().manual_seed(0)
    batch, seq = (12, 64) if size == "char" else (args.batch, args.seq)
    batches = [
        {"input_ids": torch.randint(0, vocab(size), (batch, seq), generator=gen).to(device)}
        for _ in range(args.block)
    ]
    first: dict[str, float] = {}
    for round_ in range(args.rounds + 1):  # round 0 warms up (allocations, compilation)
        order = list(runs.items())
        # every other round runs the rows in reverse, so no row always runs first of its twins
        for name, (model, opt, times) in order[::-1] if round_ % 2 else order:
            block = []
            for b in batches:
                sync(device)
                start = time.perf_counter()
                if name.endswith(BARE):
                    bare_step(model, opt, b, autocast)
                else:
                    take_step(model, opt, [b], autocast, GRAD_CLIP, 1)
                sync(device)
                block.append(time.perf_counter() - start)
            if round_ == 0:
                first[name] = block[0]
            else:
                times.append(statistics.median(block))
    base_times = next(iter(runs.values()))[2]
    baseline = statistics.median(base_times)
    out = []
    for name, (_, _, times) in runs.items():
        t = statistics.median(times)
        row = dict(size=size, params=n_params, optimizer=name, s_per_iter=t)
        row.update(overhead_pct=100 * (t / baseline - 1), tokens_per_s=batch * seq / t)
        row["overhead_pct_rounds"] = [100 * (a / b - 1) for a, b in zip(times, base_times)]
        row["first_iter_s"] = first[name]
        out.append(row)
    for row in out:  # the trainer's tokens/s as a fraction of the same optimizer's bare loop
        twin = next((r for r in out if r["optimizer"] == row["optimizer"] + BARE), None)
        row["trainer_vs_bare"] = twin and row["tokens_per_s"] / twin["tokens_per_s"]
        if twin:  # per round (the twins run next to each other): an interval, not one ratio
            mine, theirs = runs[row["optimizer"]][2], runs[twin["optimizer"]][2]
            row["trainer_vs_bare_rounds"] = [b / a for a, b in zip(mine, theirs)]
            row["trainer_vs_bare_ci95"] = mean_interval(row["trainer_vs_bare_rounds"])
        print(
            f"{size:>5} {n_params / 1e6:7.1f}M  {row['optimizer']:48s} "
            f"{row['s_per_iter'] * 1e3:9.1f} ms/iter  {row['tokens_per_s']:10.0f} tok/s  "
            f"{row['overhead_pct']:+6.2f} %  first {row['first_iter_s']:.1f} s"
            + (f"  trainer/bare {row['trainer_vs_bare']:.3f}" if twin else "")
            + (" (95 % CI {:.3f}-{:.3f})".format(*row["trainer_vs_bare_ci95"]) if twin else ""),
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--sizes", nargs="+", default=["60m", "350m"] if cuda else ["char", "9m"])
    # CUDA: 256 sequences of 256 tokens, the batch of ../shared/anchors' tokens/s
    parser.add_argument("--batch", type=int, default=256 if cuda else 4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--block", type=int, default=4, help="iterations per row per round")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench_train"))
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = [r for size in args.sizes for r in bench_size(size, args, device)]

    meta = run_meta(
        device,
        batch=f"{args.batch} x {args.seq} tokens (char: 12 x 64)",
        iterations_per_row=args.rounds * args.block,
    )
    lines = [
        "| model | parameters | optimizer | time/iter (ms) | tokens/s | overhead vs first row "
        "| overhead, rounds' 95 % CI (%) | trainer / bare loop tokens/s (95 % CI of the rounds' mean) "
        "| first iteration (s) |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| LLaMA-{r['size']} | {r['params'] / 1e6:.2f} M | {r['optimizer']} | "
            f"{r['s_per_iter'] * 1e3:.1f} | {r['tokens_per_s']:.0f} | {r['overhead_pct']:+.2f} % | "
            + "{:+.1f} to {:+.1f}".format(*mean_interval(r["overhead_pct_rounds"]))
            + " | "
            + (
                ""
                if r["trainer_vs_bare"] is None
                else f"{100 * r['trainer_vs_bare']:.1f} % (95 % CI "
                + "{:.1f}-{:.1f})".format(*(100 * x for x in r["trainer_vs_bare_ci95"]))
            )
            + f" | {r['first_iter_s']:.1f} |"
            for r in rows
        ),
    ]
    write_report(
        args.out / f"train_step_{device.type}",
        "Table 2, end to end: LLaMA training iteration, AdamW vs AM-AdamW",
        lines,
        "Median iteration of interleaved rounds (scripts/bench_train.py); weight decay 1e-4, "
        f"gradient clipping at {GRAD_CLIP:g} in every row; the first iteration includes "
        "compilation (the compiled step) and state allocation.",
        meta,
        rows,
    )


if __name__ == "__main__":
    main()
