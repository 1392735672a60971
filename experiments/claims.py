"""The claims report: each claim of the paper, the paper's number, what the runs on disk
measure, and a verdict.

    python -m experiments.claims --scale reduced [--results-dir results] [--runs-root DIR]
        [--out FILE]

writes ``results/claims/<scale>/CLAIMS.md`` (``make claims SCALE=reduced``). Nothing in it is
typed by hand: each artifact's ``results/<artifact>/<scale>/provenance.json`` lists the run
directories it was made from (relative to ``--runs-root``, by default the folder that holds
``--results-dir``, i.e. the checkout), and every row is computed from those runs' files by the
measures of ``experiments._claim_measures``. An artifact not made at this scale gives its rows
"not made at this scale"; an artifact whose listed runs are not on disk (e.g. a fresh clone)
stops the report, naming the artifacts and the commands that make them: a report is never
written from fewer runs than its artifacts were drawn from. The verdict rule is ``rule_text()``,
printed once at the top.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from amm.config import SCALES
from experiments import Run, load_runs
from experiments._claim_measures import (
    ABLATION_MARGIN,
    BETA_STAR_FACTOR,
    LOW_BETA,
    OVERHEAD_LIMIT,
    WARMUP_SHARE,
    ArtifactNotMade,
    Row,
    RunsMissing,
    claim_ablation,
    claim_convex,
    claim_lr_range,
    claim_overhead,
    claim_restarts,
    claim_soft_restarts,
    claim_vision,
    claim_warmup,
    llm_pair,
)
from experiments._stats import CONFIDENCE, Verdict, sign_test
from experiments._stepsize import ROUNDING_K, TIE_RATIO, TIME_TIE_RATIO


def rule_text() -> str:
    """The verdict rule, printed once at the top of the report."""
    six_of_seven = sign_test([1] * 6 + [-1])
    return f"""\
## How a verdict is reached

**Seeded artifacts** (vision, LLM): a comparison is *paired*: seed s of AM against seed s of
its baseline (same initialisation, same data order), AM − baseline per seed, and the
{CONFIDENCE:.0%} t-interval [lo, hi] of the mean of those differences over the n seeds.
- **supported**: the whole interval is on the side the claim names ("beats": better than 0;
  "about as good": no worse than the margin given in the row). Where the paper gives a number
  for a "beats" claim, the size counts too: **supported, larger than the paper's effect** when
  the whole interval of the gain is above the paper's gain, **supported, smaller than the
  paper's effect** when it is below it, **supported** when the paper's gain is inside it;
- **not supported**: the whole interval is on the other side (worse than 0, or worse by more
  than the margin), or AM diverged (NaN) in a seed where its baseline did not;
- **inconclusive**: the interval crosses, or n < 2, or the setting ran on generated stand-in
  data (a plumbing check), or the baseline diverged in only some seeds, or the claim's premise
  is missing (the row says which: e.g. no gain to explain).
- **the overhead** (Table 2) decides on the runs' wall clock only when its negative control
  (AdamW in two warmup regimes: the same arithmetic per step) lies within ±{OVERHEAD_LIMIT:g} %;
  otherwise the interleaved benchmark (`make bench`, per-round ratios) decides, or nothing.

**Deterministic artifacts** (figure1, figure3: full-batch, one run per setting): the unit of
replication is the problem (data set). Per problem, each method at its own best step size c
(MGD β*: its best c and β), the outcome is ahead / tie / behind by the one comparison the
artifacts use (`experiments._stepsize.compare_runs`): f − f* at the budget (diverged: inf; at
the rounding level of f*, {ROUNDING_K} eps |f*|: that level), within a ratio of {TIE_RATIO:g} a tie,
broken by the iterations to the smallest target both reached (beyond {TIME_TIE_RATIO:g}×). The
claim's share of problems gets the exact (Clopper-Pearson) {CONFIDENCE:.0%} interval, ties left
out (a sign test): **supported** above 1/2, **not supported** below 1/2, **inconclusive**
otherwise (e.g. 6 of 7 problems: [{six_of_seven.lo:.2f}, {six_of_seven.hi:.2f}]). An optimum on
the edge of its grid has not been tuned: AM-MGD ahead of a baseline tuned to its grid's edge,
or behind at its own edge, is left out and listed.

**Several settings** (data sets, model sizes, warmup regimes) in one claim: supported when it is
supported in every setting, not supported when it is not supported in at least one,
inconclusive otherwise."""


@dataclass
class Sources:
    """Where an artifact's runs are found at one scale, and links to what it drew."""

    results_dir: Path
    runs_root: Path
    scale: str
    out_dir: Path
    _cache: dict[str, list[Run]] = field(default_factory=dict)

    def provenance(self, artifact: str) -> Path:
        return self.results_dir / artifact / self.scale / "provenance.json"

    def runs(self, artifact: str) -> list[Run]:
        """The runs the artifact was made from (its provenance.json's ``run_dirs``)."""
        if artifact not in self._cache:
            prov = self.provenance(artifact)
            if not prov.exists():
                raise ArtifactNotMade(
                    f"{artifact} not made at this scale: make {artifact} SCALE={self.scale}"
                )
            listed = json.loads(prov.read_text()).get("run_dirs")
            if listed is None:
                raise ValueError(f"{prov} has no `run_dirs`; remake it: make {artifact}")
            dirs = [self.runs_root / d for d in listed]  # an absolute path stays as it is
            missing = [d for d in dirs if not (d / "summary.json").exists()]
            if missing:
                raise RunsMissing(artifact, missing, len(dirs), self.scale)
            self._cache[artifact] = load_runs(dirs)
        return self._cache[artifact]

    def link(self, artifact: str) -> str:
        """A relative markdown link from the report to the artifact's main file."""
        folder = self.results_dir / artifact / self.scale
        target = folder / MAIN_FILE.get(artifact, "")
        if not target.exists():
            target = folder
        return f"[{artifact}]({Path(os.path.relpath(target, self.out_dir)).as_posix()})"


# The file a row links to (the table that shows the numbers behind it).
MAIN_FILE = {
    "figure1": "stepsize.md",
    "figure3": "stepsize.md",
    "figure4": "table.md",
    "figure7": "table.md",
    "figure_imagenet": "table.md",
    "figure5": "table.md",
    "table2": "table2.md",
    "table5": "table5.md",
    "table6": "table6.md",
}


@dataclass(frozen=True)
class Claim:
    """One claim: its words, the artifacts that measure it, the paper's number (as the paper
    gives it, and as a gain in the measure's unit when it is one), and its measure."""

    text: str
    artifacts: list[str]
    paper: str
    measure: Callable[[Sources, Row], Row]
    paper_effect: float | None = None


CLAIMS: list[Claim] = [
    Claim(
        "AM-MGD beats MGD β=0.9 on logistic regression (sec. 4.1, Fig. 3)",
        ["figure3"],
        '"consistently outperforms constant momentum across all datasets" (9 sets)',
        lambda s, r: claim_convex(s, r, "0.9"),
    ),
    Claim(
        f"AM-MGD is competitive with MGD at the grid-tuned β* (sec. 4.1, Fig. 3): f − f* within "
        f"{BETA_STAR_FACTOR:g}×",
        ["figure3"],
        '"AM-MGD achieves lower loss without tuning" than β*, which "can exhibit instability"',
        lambda s, r: claim_convex(s, r, "beta*"),
    ),
    Claim(
        f"β_t is stable early, then drops in soft restarts (β_t < {LOW_BETA:g} β_max) where fixed "
        "momentum oscillates (sec. 4.2, 4.5; Fig. 1, 3, 4)",
        ["figure4", "figure1", "figure3"],
        'Fig. 4: "initially stable, then oscillating between 0 and β_max" (no number)',
        claim_soft_restarts,
    ),
    Claim(
        "AM-MGD beats MGD in image classification (sec. 4.2, Fig. 4, app. F.4)",
        ["figure4", "figure_imagenet"],
        '"consistently outperforms fixed-momentum baselines" (figures only)',
        claim_vision,
    ),
    Claim(
        "AM-MGD widens the range of learning rates that train (sec. 4.6, Fig. 7c)",
        ["figure7"],
        '"extends the range of admissible learning rates" (figure only)',
        claim_lr_range,
    ),
    Claim(
        f"AM-MGD is robust to λ (sec. 4.6, Fig. 7a): within {ABLATION_MARGIN:g} pp of λ = 0.1",
        ["figure7"],
        '"all values in the range appear to yield comparable performance"',
        lambda s, r: claim_ablation(s, r, "lam"),
    ),
    Claim(
        "AM-MGD's gain is robust to the batch size (sec. 4.6, Fig. 7b): within "
        f"{ABLATION_MARGIN:g} pp of the gain at the default batch",
        ["figure7"],
        'smaller batches "do not negatively affect our method\'s relative performance gains"',
        lambda s, r: claim_ablation(s, r, "batch_size"),
    ),
    Claim(
        "AM-AdamW beats AdamW in LLM pretraining (sec. 4.3, Fig. 5, Table 6)",
        ["figure5"],
        "Table 6, final eval loss: 4.02 → 3.95 (60M), 3.87 → 3.79 (100M): a gain of 0.07–0.08",
        llm_pair("figure5", "am_adamw", "adamw", paper=0.07),
        paper_effect=0.07,
    ),
    Claim(
        f"AM-AdamW without warmup does without it (sec. 4.3): it recovers at least "
        f"{WARMUP_SHARE:.0%} of the gap between AdamW without and with warmup",
        ["figure5"],
        '"even without warmup, AM-AdamW compares to the performance of AdamW with warmup" '
        "(share recovered about 1)",
        claim_warmup,
    ),
    Claim(
        "Per-layer β is slightly better than one global β (app. D.3, Table 5)",
        ["table5"],
        "Table 5, LLaMA 100M: 3.811 → 3.792 (warmup), 3.814 → 3.792 (none): a gain of 0.019–0.022",
        llm_pair("table5", "am_adamw", "am_adamw_global", paper=0.019),
        paper_effect=0.019,
    ),
    Claim(
        "Restarts explain part, but not all, of the gain (sec. 4.5, Table 6)",
        ["table6"],
        "Table 6: Restart 3.97 / 3.82, between AdamW 4.02 / 3.87 and AM-AdamW 3.95 / 3.79 "
        "(60M / 100M): restarts give 0.05 of the 0.07–0.08",
        claim_restarts,
        paper_effect=0.05,
    ),
    Claim(
        f"AM-AdamW's overhead per iteration is under {OVERHEAD_LIMIT:g} % (sec. 4.4, app. D.4, "
        "Table 2)",
        ["table2"],
        "Table 2: 0.11–0.48 % (20M–1B, GPUs)",
        lambda s, r: claim_overhead(s, r, s.results_dir),
    ),
]


def evaluate(src: Sources) -> list[Row]:
    """One row per claim. An artifact not made at this scale makes its rows say so; runs that
    an artifact lists but that are missing (or cannot be compared) are an error: no report."""
    rows, missing = [], []
    for claim in CLAIMS:
        row = Row(claim.text, claim.artifacts, paper=claim.paper, paper_effect=claim.paper_effect)
        try:
            row = claim.measure(src, row)
        except ArtifactNotMade as err:
            row.reason = str(err)
        except RunsMissing as err:
            missing.append(err)
        rows.append(row)
    if missing:
        seen = {e.artifact: e for e in missing}
        raise SystemExit(
            f"the claims report at {src.scale} scale needs the runs the artifacts were drawn "
            "from, and these are not on disk under "
            f"{src.runs_root}:\n"
            + "\n".join(f"  {e}" for e in seen.values())
            + f"\nMake them (the commands above), or pass --runs-root where they are. "
            f"{src.out_dir / 'CLAIMS.md'} was left as it is."
        )
    return rows


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def machines(provenance: dict[str, object]) -> str:
    """The machines an artifact's runs ran on (hosts, CPUs, torch builds), with counts."""
    found = provenance.get("run_machines")
    if not isinstance(found, list) or not found:
        return "machines of the runs not recorded"
    return "; ".join(
        f"{m.get('count')} × {m.get('cpu')} ({m.get('hostname')}, torch {m.get('torch')})"
        for m in found
        if isinstance(m, dict)
    )


def sources_text(src: Sources) -> list[str]:
    """Which runs of each artifact the report read: date, code version, machines."""
    lines = []
    for artifact in sorted({a for c in CLAIMS for a in c.artifacts}):
        prov = src.provenance(artifact)
        if not prov.exists():
            lines.append(f"- {artifact}: not made at this scale")
            continue
        p = json.loads(prov.read_text())
        git = p.get("git") or {}
        dirty = " (dirty)" if git.get("dirty") else ""
        lines.append(
            f"- {src.link(artifact)}: {len(p.get('run_dirs', []))} runs, drawn {p.get('date')} "
            f"from git {str(git.get('sha'))[:10]}{dirty}; ran on {machines(p)}"
        )
    return lines


def report(src: Sources) -> str:
    rows = evaluate(src)
    counts = Counter(r.verdict for r in rows)
    lines = [
        f"# Claims of the paper at {src.scale} scale",
        "",
        f"Generated by `python -m experiments.claims --scale {src.scale}` (`make claims "
        f"SCALE={src.scale}`) from the runs on disk; do not edit. "
        + ", ".join(f"{counts[v]} {v}" for v in Verdict if counts[v])
        + f" ({len(rows)} claims).",
        "",
        rule_text(),
        "",
        "## Claims",
        "",
        "| # | claim (paper) | the paper's number | artifact | measured at this scale | n | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        links = ", ".join(src.link(a) for a in r.artifacts)
        effect = r.effect + (f"<br>**{r.reason}**" if r.reason else "")
        lines.append(
            f"| {i} | {cell(r.claim)} | {cell(r.paper)} | {links} | {cell(effect) or '–'} | "
            f"{r.n or '–'} | **{r.verdict}** |"
        )
    for i, r in enumerate(rows, 1):
        if r.details:
            lines += ["", f"### Claim {i}: {r.claim}", "", *r.details]
    lines += ["", "## Sources", "", *sources_text(src)]
    return "\n".join(lines) + "\n"


def sources_for(args: argparse.Namespace) -> tuple[Sources, Path]:
    results = args.results_dir.resolve()
    out = args.out or results / "claims" / args.scale / "CLAIMS.md"
    root = (args.runs_root or results.parent).resolve()
    return Sources(results, root, args.scale, out.parent.resolve()), out


def parser(description: str) -> argparse.ArgumentParser:
    """The arguments of the report (and of the power analysis that reads the same runs)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--scale", required=True, choices=list(SCALES))
    p.add_argument("--results-dir", type=Path, default=Path("results"))
    p.add_argument(
        "--runs-root",
        type=Path,
        default=None,
        help="where the provenance files' relative run_dirs start (default: the folder that "
        "holds --results-dir)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="default: <results-dir>/claims/<scale>/CLAIMS.md"
    )
    return p


def main(argv: list[str] | None = None) -> Path:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    src, out = sources_for(args)
    text = report(src)  # raises (SystemExit) before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
