"""The paper's LLM results table (sec. 4.3): final C4 evaluation perplexity per model size.

Columns: AdamW and AM-AdamW, each with warmup and without; perplexity = exp(evaluation loss),
the mean next-token cross-entropy over the held-out tokens. Writes table_llm.md.
"""

from __future__ import annotations

from pathlib import Path

from experiments import load_runs
from experiments._llm import by_size, method_name, num, perplexity, regime, warmup


def make(run_dirs: list[Path], out_dir: Path, scale: str) -> None:
    runs = load_runs(run_dirs)
    # columns: with warmup first, then without; AdamW before AM-AdamW
    keys = {(-warmup(r), r.method != "adamw", method_name(r), regime(r)) for r in runs}
    columns = [(m, reg) for *_, m, reg in sorted(keys)]
    lines = [
        f"# LLaMA on C4 ({scale} scale): final evaluation perplexity (evaluation loss)",
        "",
        "| model | " + " | ".join(f"{m}, {reg}" for m, reg in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for size, group in by_size(runs).items():
        cells = []
        for m, reg in columns:
            match = [r for r in group if method_name(r) == m and regime(r) == reg]
            if not match:
                cells.append("–")
                continue
            loss = match[0].final("eval_loss")
            cells.append(f"{num(perplexity(loss), 1)} ({num(loss)})")
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    cfg = runs[0].cfg
    lines += [
        "",
        f"{runs[0].summary.get('step')} steps of {cfg.dataset.batch_size} x {cfg.dataset.seq_len} "
        f"tokens, lr {cfg.optimizer.lr:g}, cosine schedule; evaluation on the first "
        f"{cfg.dataset.eval_tokens} held-out tokens of "
        f"{cfg.dataset.data_files or 'the C4 validation split'}.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table_llm.md").write_text("\n".join(lines) + "\n")
