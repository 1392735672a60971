"""Optimizer-step benchmark on LLaMA-shaped tensor lists (`make bench-optim`).

Times one `optimizer.step()` (gradients already set) for torch's AdamW / SGD(momentum) and
AM-AdamW / AM-SGD, and reports the ratios. A benchmark, not a test: numbers depend on the
machine. Writes a markdown table and a JSON record (command, git SHA, date, machine).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

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


def make_params(shapes, device, dtype):
    gen = torch.Generator(device="cpu").manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype) * 0.02)
        p.grad = torch.randn(s, generator=gen).to(device, dtype) * 1e-3
        params.append(p)
    return params


OPTIMIZERS = {
    "AdamW (torch, foreach)": lambda p: torch.optim.AdamW(
        p, lr=1e-3, betas=(0.9, 0.99), weight_decay=1e-4, foreach=True
    ),
    "AM-AdamW (foreach, global beta)": lambda p: AMAdamW(
        p, lr=1e-3, weight_decay=1e-4, foreach=True
    ),
    "AM-AdamW (foreach, per-tensor beta)": lambda p: AMAdamW(
        p, lr=1e-3, weight_decay=1e-4, foreach=True, beta_scope="per-tensor"
    ),
    "AM-AdamW (foreach, global, nonfinite=off)": lambda p: AMAdamW(
        p, lr=1e-3, weight_decay=1e-4, foreach=True, nonfinite="off"
    ),
    "SGD momentum (torch, foreach)": lambda p: torch.optim.SGD(
        p, lr=1e-2, momentum=0.9, dampening=0.9, foreach=True
    ),
    "AM-SGD (foreach, global beta)": lambda p: AMSGD(p, lr=1e-2, foreach=True),
    "AM-SGD (foreach, global, nonfinite=off)": lambda p: AMSGD(
        p, lr=1e-2, foreach=True, nonfinite="off"
    ),
}
BASELINE = {"AM-AdamW": "AdamW (torch, foreach)", "AM-SGD": "SGD momentum (torch, foreach)"}


def time_step(opt, params, repeats: int, device) -> float:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(3):  # warm-up: state allocation, first adaptive step
        opt.step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        opt.step()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)  # best of N: robust to the noise of a shared machine


def fmt_ratio(ratio: float | None) -> str:
    return "" if ratio is None else f"{ratio:.2f}"


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    except Exception:
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=["10M", "100M"], choices=sorted(SIZES))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("results/bench_optim"))
    args = parser.parse_args()
    device = torch.device(args.device)

    rows = []
    for size in args.sizes:
        shapes = llama_shapes(*SIZES[size])
        n = sum(torch.Size(s).numel() for s in shapes)
        times = {}
        for name, factory in OPTIMIZERS.items():
            params = make_params(shapes, device, torch.float32)
            times[name] = time_step(factory(params), params, args.repeats, device)
            del params
        for name, t in times.items():
            base = next((b for k, b in BASELINE.items() if name.startswith(k + " ")), None)
            ratio = t / times[base] if base else None
            rows.append(
                dict(
                    size=size,
                    params=n,
                    tensors=len(shapes),
                    optimizer=name,
                    ms=t * 1e3,
                    ratio=ratio,
                )
            )
            print(
                f"{size:>5} {n / 1e6:7.1f}M  {name:44s} {t * 1e3:9.2f} ms"
                + (f"  x{ratio:.2f}" if ratio else ""),
                flush=True,
            )

    machine = f"{platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        machine = torch.cuda.get_device_name()
    meta = dict(
        command=" ".join([Path(sys.executable).name] + sys.argv),
        git_sha=git_sha(),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine,
        device=str(device),
        torch=torch.__version__,
        repeats=args.repeats,
    )
    lines = [
        "| size | parameters | optimizer | step (ms) | ratio vs torch |",
        "|---|---|---|---|---|",
        *(
            f"| {r['size']} | {r['params'] / 1e6:.1f} M | {r['optimizer']} | {r['ms']:.2f} | "
            f"{fmt_ratio(r['ratio'])} |"
            for r in rows
        ),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    tag = device.type
    (args.out / f"optim_step_{tag}.md").write_text(
        "# Optimizer step time (best of {repeats} steps)\n\n".format(**meta)
        + "\n".join(lines)
        + "\n\n"
        + "\n".join(f"- {k}: `{v}`" for k, v in meta.items())
        + "\n"
    )
    (args.out / f"optim_step_{tag}.json").write_text(
        json.dumps(dict(meta=meta, rows=rows), indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
