"""The claims report: each claim of the paper, what the runs on disk measure, and a verdict.

    python -m experiments.claims --scale reduced [--results-dir results] [--runs-root DIR]
        [--out FILE]

writes ``results/claims/<scale>/CLAIMS.md`` (``make claims SCALE=reduced``). Nothing in it is
typed by hand: each artifact's ``results/<artifact>/<scale>/provenance.json`` lists the run
directories it was made from (relative to ``--runs-root``, by default the folder that holds
``--results-dir``, i.e. the checkout), and every row is computed from those runs' files. An
artifact not made at this scale gives its rows "not run at this scale" (inconclusive); the
other rows are still computed. The verdict rule is ``rule_text()`` below, printed once at the top.

Stochastic artifacts compare AM with its baseline seed by seed (``experiments._stats``);
the full-batch convex ones (figure1, figure3) are deterministic, so there the unit of
replication is the problem (data set), and a sign test over problems gives the interval.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from experiments import Run, load_runs
from experiments._llm import (
    clock_drift,
    final_eval_loss,
    overhead_pct,
    size_label,
    time_per_iteration,
    warmup,
)
from experiments._stats import (
    CONFIDENCE,
    Estimate,
    combine,
    paired_difference,
    per_seed,
    run_diverged,
    verdict,
)
from experiments._stepsize import ROUNDING_K, budgets, diverged, gap_at, lr_scale, rounding_level
from experiments._vision import WORKING_FRACTION, any_stand_in, working_threshold
from experiments._vision import setting as setting_of

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"

# Margins of the "about as good" claims, and the convex problems' resolution.
BETA_STAR_FACTOR = 2.0  # "competitive with beta*": f - f* at most 2x MGD beta*'s
WARMUP_MARGIN = 0.02  # nats: "AM-AdamW without warmup is about as good as AdamW with warmup"
ABLATION_MARGIN = 1.0  # percentage points of test accuracy: "robust to lambda / batch size"
OVERHEAD_LIMIT = 0.5  # percent: "overhead per iteration under 0.5 %"
TIE_RATIO = 1.01  # convex: f - f* within 1 % of each other is a tie


def rule_text() -> str:
    """The verdict rule, printed once at the top of the report."""
    six_of_seven = sign_test([1] * 6 + [-1])
    return f"""\
## How a verdict is reached

**Seeded artifacts** (vision, LLM): a comparison is *paired*: seed s of AM against seed s of
its baseline (same initialisation, same data order), AM − baseline per seed, and the
{CONFIDENCE:.0%} t-interval [lo, hi] of the mean of those differences over the n seeds.
- **supported**: the whole interval is on the side the claim names ("beats": better than 0;
  "about as good": no worse than the margin given in the row);
- **not supported**: the whole interval is on the other side (worse than 0, or worse by more
  than the margin), or AM diverged (NaN) in a seed where its baseline did not;
- **inconclusive**: the interval crosses, or n < 2 (one seed gives no interval), or the
  setting ran on generated stand-in data (smoke's CIFAR/ImageNet plumbing check: no evidence),
  or the baseline diverged in some seeds where AM did not (all seeds, n ≥ 2: supported).
- **the overhead** (Table 2) is timed on separate runs, so it has a negative control: AdamW
  in two warmup regimes (the same arithmetic per step), seed by seed. When that difference's
  interval reaches beyond ±{OVERHEAD_LIMIT:g} %, the clock drifted more than the claim's limit
  between runs and the row is **inconclusive** whatever AM-AdamW's interval says.

**Deterministic artifacts** (figure1, figure3: full-batch, one run per setting, no seed changes
a run): the unit of replication is the problem (data set). Per problem the outcome is AM ahead
/ behind / tie, and the claim's share of problems gets the exact (Clopper-Pearson)
{CONFIDENCE:.0%} interval of a binomial proportion, ties left out (a two-sided sign test,
`scipy.stats.binomtest`): **supported** when the interval is above 1/2, **not supported**
when it is below 1/2, **inconclusive** otherwise (e.g. 6 of 7 problems:
[{six_of_seven.lo:.2f}, {six_of_seven.hi:.2f}]). f − f* is read at the runs' last iterate; two gaps within
{TIE_RATIO - 1:.0%} of each other, both at the rounding level of f* ({ROUNDING_K} eps |f*|,
`experiments._stepsize.rounding_level`), or
both diverged are ties; a diverged run is behind one that did not. These rows use the
step-size axis lr = c / L: the verdict shown is **each method at its own best c** (its lowest
f − f*), and the verdict at every single c is listed with it.

**Several settings** (data sets, model sizes, warmup regimes) in one claim: supported when it is
supported in every setting, not supported when it is not supported in at least one,
inconclusive otherwise."""


class NotAvailable(Exception):
    """An artifact (or the runs of a claim) missing at this scale: the row says what to run."""


@dataclass
class Row:
    """One claim of the paper and what the runs say about it."""

    claim: str
    artifacts: list[str]
    effect: str = ""
    n: str = ""
    verdict: str = INCONCLUSIVE
    details: list[str] = field(default_factory=list)


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
                raise NotAvailable(
                    f"{artifact} not run at this scale: make {artifact} SCALE={self.scale}"
                )
            listed = json.loads(prov.read_text()).get("run_dirs")
            if listed is None:
                raise ValueError(f"{prov} has no `run_dirs`; remake it: make {artifact}")
            dirs = [self.runs_root / d for d in listed]  # an absolute path stays as it is
            missing = [d for d in dirs if not (d / "summary.json").exists()]
            if missing:
                raise NotAvailable(
                    f"{len(missing)} of {len(dirs)} runs that {prov} lists are not finished "
                    f"under {self.runs_root} (e.g. {missing[0]}): make {artifact} "
                    f"SCALE={self.scale}, or --runs-root where they are"
                )
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


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """The rule for several settings of one claim (stated in ``rule_text``)."""
    found = list(verdicts)
    if not found:
        return INCONCLUSIVE
    if NOT_SUPPORTED in found:
        return NOT_SUPPORTED
    return SUPPORTED if all(v == SUPPORTED for v in found) else INCONCLUSIVE


# ---------------------------------------------------------------- seeded (stochastic) claims


def accuracy(run: Run) -> float:
    """Final evaluation accuracy in percent."""
    return 100.0 * run.final("eval_accuracy")


@dataclass
class Comparison:
    """A paired AM − baseline difference in one setting, and its verdict."""

    setting: str
    diff: Estimate
    verdict: str

    def text(self) -> str:
        return f"{self.setting}: {self.diff.format_interval()} → {self.verdict}"


def compare(
    setting: str,
    am: Mapping[int, float],
    base: Mapping[int, float],
    *,
    better: str,
    margin: float = 0.0,
    stand_in: bool = False,
) -> Comparison:
    """AM − baseline, paired by seed; a diverged run (NaN) decides as ``rule_text`` says."""
    diff = paired_difference(am, base)
    found = verdict(diff, better=better, margin=margin)  # NaN: not supported
    am_bad = sorted(s for s, v in am.items() if not math.isfinite(v))
    base_bad = sorted(s for s, v in base.items() if not math.isfinite(v))
    if base_bad and set(am_bad) <= set(base_bad):  # the baseline diverged where AM did not
        everywhere = not am_bad and len(base_bad) == len(base) >= 2
        found = SUPPORTED if everywhere else INCONCLUSIVE
        setting += f" (baseline diverged: seeds {base_bad}; AM: seeds {am_bad})"
    elif am_bad:
        setting += f" (AM diverged: seeds {am_bad}; baseline: seeds {base_bad})"
    return Comparison(setting, diff, INCONCLUSIVE if stand_in else found)


def fill(row: Row, comparisons: list[Comparison], what: str) -> Row:
    """The row from its settings' comparisons (``what``: the number compared)."""
    if not comparisons:
        raise NotAvailable("no setting has both methods' runs")
    row.effect = f"{what}<br>" + "<br>".join(c.text() for c in comparisons)
    seeds = sorted({c.diff.n for c in comparisons})
    row.n = f"{'/'.join(map(str, seeds))} seeds × {len(comparisons)} setting(s)"
    row.verdict = combine_verdicts(c.verdict for c in comparisons)
    return row


def llm_setting(run: Run) -> str:
    w = warmup(run)
    return f"{size_label(run)}, {f'warmup {w}' if w else 'no warmup'}"


def cells(runs: Iterable[Run], setting: Callable[[Run], str]) -> dict[str, dict[str, list[Run]]]:
    """setting -> method -> runs (one per seed)."""
    out: dict[str, dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        out[setting(r)][r.method].append(r)
    return out


def method_pairs(
    groups: Mapping[str, Mapping[str, list[Run]]],
    am: str,
    base: str,
    value: Callable[[Run], float],
    *,
    better: str,
) -> list[Comparison]:
    """``am`` vs ``base`` in every setting that ran both."""
    return [
        compare(
            s,
            per_seed(m[am], value),
            per_seed(m[base], value),
            better=better,
            stand_in=any_stand_in(m[am] + m[base]),
        )
        for s, m in sorted(groups.items())
        if am in m and base in m
    ]


def runs_of(src: Sources, artifacts: Iterable[str]) -> tuple[dict[str, list[Run]], list[str]]:
    """The runs of those ``artifacts`` made at this scale, and a note for each one that is not
    (NotAvailable when none is)."""
    found, notes = {}, []
    for artifact in artifacts:
        try:
            found[artifact] = src.runs(artifact)
        except NotAvailable as err:
            notes.append(str(err))
    if not found:
        raise NotAvailable("; ".join(notes))
    return found, notes


def claim_vision(src: Sources, row: Row) -> Row:
    """Figure 4 (CIFAR; reduced: MNIST) and the ImageNet figure, where made."""
    found, notes = runs_of(src, row.artifacts)
    groups = cells((r for runs in found.values() for r in runs), setting_of)
    pairs = method_pairs(groups, "am_mgd", "mgd", accuracy, better="higher")
    what = "final evaluation accuracy, AM-MGD − MGD (percentage points):"
    return fill(row, pairs, " ".join([what, *(f"({n})" for n in notes)]))


def ablation_runs(src: Sources) -> tuple[list[Run], dict[str, float]]:
    runs = src.runs("figure7")
    defaults = {str(k): float(v) for k, v in runs[0].cfg.ablation_defaults.items()}
    return runs, defaults


def at_default(run: Run, defaults: Mapping[str, float], free: str) -> bool:
    """The run is at the ablation's default point in every value but ``free``."""
    values = {
        "lr": float(run.cfg.optimizer.lr),
        "batch_size": float(run.cfg.dataset.batch_size),
        "lam": float(run.cfg.optimizer.get("lam", defaults["lam"])),  # MGD has no lam
    }
    return all(values[k] == defaults[k] for k in values if k != free)


def working_lrs(runs: list[Run], lrs: list[float], threshold: float) -> dict[int, float]:
    """{seed: how many of ``lrs`` reached a final test accuracy >= ``threshold``}."""
    works: dict[int, float] = defaultdict(float)
    for r in runs:
        if float(r.cfg.optimizer.lr) in lrs:
            works[r.seed] += not run_diverged(r) and accuracy(r) >= threshold
    return works


def gain(am: list[Run], base: list[Run]) -> dict[int, float]:
    """{seed: AM's accuracy - the baseline's, same seed} (NaN where either diverged)."""
    return combine(per_seed(am, accuracy), per_seed(base, accuracy), lambda a, b: a - b)


def claim_lr_range(src: Sources, row: Row) -> Row:
    runs, defaults = ablation_runs(src)
    grid = [r for r in runs if at_default(r, defaults, "lr")]
    comparisons = []
    for setting, methods in sorted(cells(grid, setting_of).items()):
        if not {"am_mgd", "mgd"} <= set(methods):
            continue
        fake = any_stand_in([r for rs in methods.values() for r in rs])
        threshold = working_threshold(
            accuracy(r) for rs in methods.values() for r in rs if not run_diverged(r)
        )
        lrs = sorted(
            {float(r.cfg.optimizer.lr) for r in methods["am_mgd"]}
            & {float(r.cfg.optimizer.lr) for r in methods["mgd"]}
        )

        label = f"{setting}, {len(lrs)} lrs {lrs[0]:g}–{lrs[-1]:g}, threshold {threshold:.2f} %"
        comparisons.append(
            compare(
                label,
                working_lrs(methods["am_mgd"], lrs, threshold),
                working_lrs(methods["mgd"], lrs, threshold),
                better="higher",
                stand_in=fake,
            )
        )
    what = (
        f"learning rates that train (final test accuracy ≥ {WORKING_FRACTION:.0%} of the best run "
        "of the grid), AM-MGD − MGD, per seed:"
    )
    return fill(row, comparisons, what)


def claim_ablation(src: Sources, row: Row, free: str) -> Row:
    """7a (``free="lam"``: AM-MGD at each lambda vs at the default) or 7b (``"batch_size"``:
    AM-MGD − MGD at each batch size vs that gain at the default batch)."""
    runs, defaults = ablation_runs(src)
    grid = [r for r in runs if at_default(r, defaults, free)]
    value_of = (
        (lambda r: float(r.cfg.optimizer.get("lam", math.nan)))
        if free == "lam"
        else (lambda r: float(r.cfg.dataset.batch_size))
    )
    comparisons = []
    for setting, methods in sorted(cells(grid, setting_of).items()):
        fake = any_stand_in([r for rs in methods.values() for r in rs])
        am = defaultdict(list)
        for r in methods.get("am_mgd", []):
            am[value_of(r)].append(r)
        base = per_seed(am.get(defaults[free], []), accuracy)
        if free == "lam":
            for v in sorted(set(am) - {defaults[free]}):
                comparisons.append(
                    compare(
                        f"{setting}, λ={v:g} vs λ={defaults[free]:g}",
                        per_seed(am[v], accuracy),
                        base,
                        better="higher",
                        margin=ABLATION_MARGIN,
                        stand_in=fake,
                    )
                )
            continue
        mgd = defaultdict(list)
        for r in methods.get("mgd", []):
            mgd[value_of(r)].append(r)

        for v in sorted((set(am) & set(mgd)) - {defaults[free]}):
            comparisons.append(
                compare(
                    f"{setting}, batch {v:g} vs {defaults[free]:g}",
                    gain(am[v], mgd[v]),
                    gain(am[defaults[free]], mgd[defaults[free]]),
                    better="higher",
                    margin=ABLATION_MARGIN,
                    stand_in=fake,
                )
            )
    if not comparisons:
        raise NotAvailable(
            f"not in this scale's sweep: figure7 at {src.scale} varies no {free} "
            "(configs/experiment/figure7.yaml)"
        )
    what = (
        f"final test accuracy of AM-MGD at each λ − at the default λ (pp), margin −{ABLATION_MARGIN:g} pp:"
        if free == "lam"
        else "AM-MGD's gain over MGD (test accuracy, pp) at each batch size − the gain at the "
        f"default batch, margin −{ABLATION_MARGIN:g} pp:"
    )
    return fill(row, comparisons, what)


def llm_pair(artifact: str, am: str, base: str) -> Callable[[Sources, Row], Row]:
    """A claim "``am`` beats ``base``" on the final evaluation loss of the artifact's LLM runs,
    in every model size and warmup regime."""

    def measure(src: Sources, row: Row) -> Row:
        groups = cells(src.runs(artifact), llm_setting)
        found = method_pairs(groups, am, base, final_eval_loss, better="lower")
        return fill(row, found, f"final evaluation loss, {am} − {base} (nats):")

    return measure


def claim_warmup(src: Sources, row: Row) -> Row:
    runs = src.runs("figure5")
    comparisons = []
    for size in sorted({size_label(r) for r in runs}):
        am = [r for r in runs if size_label(r) == size and r.method == "am_adamw" and not warmup(r)]
        adamw = [r for r in runs if size_label(r) == size and r.method == "adamw" and warmup(r)]
        if am and adamw:
            comparisons.append(
                compare(
                    f"{size}",
                    per_seed(am, final_eval_loss),
                    per_seed(adamw, final_eval_loss),
                    better="lower",
                    margin=WARMUP_MARGIN,
                )
            )
    what = (
        "final evaluation loss, AM-AdamW without warmup − AdamW with warmup (nats), "
        f"margin {WARMUP_MARGIN:g}:"
    )
    return fill(row, comparisons, what)


def claim_restarts(src: Sources, row: Row) -> Row:
    """Clip (beta >= beta_min: no soft restarts) loses part of AM's gain (AM better than Clip)
    but keeps part of it (Clip better than AdamW)."""
    groups = cells(src.runs("table6"), llm_setting)
    lost = method_pairs(groups, "am_adamw", "am_adamw_clip", final_eval_loss, better="lower")
    kept = method_pairs(groups, "am_adamw_clip", "adamw", final_eval_loss, better="lower")
    for c in lost:
        c.setting = f"AM-AdamW − Clip, {c.setting}"
    for c in kept:
        c.setting = f"Clip − AdamW, {c.setting}"
    what = (
        "final evaluation loss (nats); restarts explain part of the gain when AM-AdamW beats "
        "Clip (β ≥ β_min, no soft restarts), and not all of it when Clip still beats AdamW:"
    )
    return fill(row, lost + kept, what)


def clock_resolves(drift: Estimate | None) -> bool:
    """Whether separate runs' wall clocks can decide a claim about OVERHEAD_LIMIT %: the
    negative control's whole interval lies within ± that limit (no control: assumed so)."""
    if drift is None:
        return True
    return (
        drift.n >= 2
        and math.isfinite(drift.lo)
        and -OVERHEAD_LIMIT <= drift.lo
        and drift.hi <= OVERHEAD_LIMIT
    )


def claim_overhead(src: Sources, row: Row) -> Row:
    by_size: dict[str, dict[int, dict[str, list[Run]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in src.runs("table2"):
        by_size[size_label(r)][warmup(r)][r.method].append(r)
    comparisons, controls = [], []
    for size, regimes in sorted(by_size.items()):
        drift = clock_drift({w: m["adamw"] for w, m in regimes.items() if m.get("adamw")})
        resolves = clock_resolves(drift)
        if drift is not None:
            controls.append(
                f"{size}, AdamW warmup {min(regimes)} over warmup {sorted(regimes)[1]}: "
                f"{drift.format_interval()} → "
                + (f"within ±{OVERHEAD_LIMIT:g} %" if resolves else f"beyond ±{OVERHEAD_LIMIT:g} %")
            )
        for _, methods in sorted(regimes.items(), reverse=True):
            if not {"am_adamw", "adamw"} <= set(methods):
                continue
            pct = overhead_pct(
                per_seed(methods["am_adamw"], time_per_iteration),
                per_seed(methods["adamw"], time_per_iteration),
            )
            found = verdict(pct, better="lower", margin=OVERHEAD_LIMIT)
            setting = llm_setting(methods["adamw"][0])
            comparisons.append(Comparison(setting, pct, found if resolves else INCONCLUSIVE))
    what = (
        "time per iteration of AM-AdamW / AdamW − 1 (%), per seed, from the table2 runs' wall "
        "clock (median seconds per update, evaluations left out; `experiments._llm."
        "time_per_iteration`); supported when the interval is below "
        f"{OVERHEAD_LIMIT:g} %, if the negative control allows (below):"
    )
    row = fill(row, comparisons, what)
    if controls:
        row.effect += (
            "<br>negative control, the machine's clock drift between separate runs with the "
            "same arithmetic per step (%): "
            + "; ".join(controls)
            + f". Beyond ±{OVERHEAD_LIMIT:g} % the runs' wall clock cannot resolve the claim "
            "(inconclusive); `make bench` times the optimizers interleaved "
            "(results/bench_train/)."
        )
    return row


# ---------------------------------------------------------------- deterministic (convex) claims


@dataclass
class SignTest:
    """Outcomes over problems (+1 the claim's way, -1 against, 0 tie) and their verdict."""

    ahead: int
    behind: int
    ties: int
    lo: float
    hi: float
    verdict: str

    def text(self) -> str:
        m = self.ahead + self.behind
        if m == 0:
            return f"no problem decides (ties: {self.ties})"
        return (
            f"{self.ahead} of {m} (ties: {self.ties}), {CONFIDENCE:.0%} interval "
            f"[{self.lo:.2f}, {self.hi:.2f}]"
        )


def sign_test(outcomes: Iterable[int]) -> SignTest:
    found = list(outcomes)
    ahead, behind = found.count(1), found.count(-1)
    ties = len(found) - ahead - behind
    if ahead + behind == 0:
        return SignTest(0, 0, ties, math.nan, math.nan, INCONCLUSIVE)
    ci = binomtest(ahead, ahead + behind).proportion_ci(CONFIDENCE, method="exact")
    v = SUPPORTED if ci.low > 0.5 else NOT_SUPPORTED if ci.high < 0.5 else INCONCLUSIVE
    return SignTest(ahead, behind, ties, float(ci.low), float(ci.high), v)


def final_gap(run: Run, t: int) -> float:
    """f(x_t) - f*, inf when the run diverged by t, at least the rounding level."""
    if diverged(run, t):
        return math.inf
    g = gap_at(run, t)
    if math.isnan(g):
        raise ValueError(f"run {run.dir} has no record of iteration {t}")
    return max(g, rounding_level(run))


def ratio_of(am: float, base: float) -> float:
    """AM's gap / the baseline's: 0 when only the baseline diverged, 1 when both are 0 (f* = 0
    reached to the last bit), inf when only the baseline is 0."""
    if am == base:
        return 1.0
    if not math.isfinite(base):
        return 0.0
    return am / base if base > 0 else math.inf


def outcome(am: float, base: float, factor: float = 1.0) -> int:
    """+1: AM's gap is lower than ``factor`` x the baseline's (beyond the tie band), -1 higher,
    0 a tie. ``factor`` > 1 is "at most factor x worse" (then only worse counts against)."""
    if am == base:  # both at the rounding level, or both diverged
        return 0
    ratio = ratio_of(am, base)
    if factor > 1.0:
        return 1 if ratio <= factor else -1
    return 1 if ratio < 1 / TIE_RATIO else -1 if ratio > TIE_RATIO else 0


def convex_table(src: Sources) -> tuple[dict[str, dict[tuple[str, float, float], Run]], int]:
    """figure3's runs as set -> (method, momentum, c) -> run, and the last iteration."""
    runs = src.runs("figure3")
    table: dict[str, dict[tuple[str, float, float], Run]] = defaultdict(dict)
    for r in runs:
        path = r.cfg.dataset.get("path")
        name = Path(str(path)).name if path else str(r.cfg.dataset.name)
        momentum = float(r.cfg.optimizer.get("momentum", math.nan)) if r.method == "mgd" else 0.0
        table[name][(r.method, momentum, lr_scale(r))] = r
    return table, budgets(runs)[-1]


def best(gaps: Mapping[float, float]) -> tuple[float, float]:
    """(c, gap) of the lowest gap (the smaller c on a tie)."""
    c = min(gaps, key=lambda k: (gaps[k], k))
    return c, gaps[c]


def claim_convex(src: Sources, row: Row, against: str) -> Row:
    """AM-MGD vs MGD beta=0.9 (``against="0.9"``) or vs the grid's best beta (``"beta*"``),
    per data set, at each c and at each method's own best c."""
    table, t = convex_table(src)
    factor = BETA_STAR_FACTOR if against == "beta*" else 1.0
    per_c: dict[float, list[int]] = defaultdict(list)
    ratios: dict[float, list[float]] = defaultdict(list)
    best_outcomes, best_ratios, picks = [], [], []
    for name, runs in sorted(table.items()):
        am = {c: final_gap(r, t) for (m, _, c), r in runs.items() if m == "am_mgd"}
        base: dict[float, float] = {}
        beta: dict[float, float] = {}
        for (m, b, c), r in runs.items():
            if m != "mgd" or (against != "beta*" and b != 0.9):
                continue
            g = final_gap(r, t)
            if c not in base or g < base[c]:
                base[c], beta[c] = g, b
        for c in sorted(set(am) & set(base)):
            per_c[c].append(outcome(am[c], base[c], factor))
            ratios[c].append(ratio_of(am[c], base[c]))
        if am and base:
            (ca, ga), (cb, gb) = best(am), best(base)
            best_outcomes.append(outcome(ga, gb, factor))
            best_ratios.append(ratio_of(ga, gb))
            mgd = f"{gb:.2e} (c={cb:g}" + (f", β={beta[cb]:g})" if against == "beta*" else ")")
            sign = {1: "ahead" if factor == 1.0 else "within", -1: "behind", 0: "tie"}
            picks.append(
                f"| {name} | {ga:.2e} (c={ca:g}) | {mgd} | {ratio_of(ga, gb):.3g} | "
                f"{sign[best_outcomes[-1]]} |"
            )
    if not best_outcomes:
        raise NotAvailable("figure3 has no data set with both AM-MGD and MGD runs")
    claim_way = "AM-MGD ahead" if factor == 1.0 else f"AM-MGD within {factor:g}× of MGD β*"
    overall = sign_test(best_outcomes)
    row.effect = (
        f"f − f* after {t} iterations, data sets where {claim_way}: at each method's best c "
        f"{overall.text()}, median ratio AM/MGD {median(best_ratios)}; per c: "
        + "; ".join(
            f"c={c:g}: {sign_test(o).text()} → {sign_test(o).verdict}"
            for c, o in sorted(per_c.items())
        )
    )
    row.n = f"{len(best_outcomes)} data sets"
    row.verdict = overall.verdict
    row.details = [
        f"| c | {claim_way} | median f − f* ratio AM/MGD | verdict |",
        "|---|---|---|---|",
        *(
            f"| {c:g} | {sign_test(o).text()} | {median(ratios[c])} | {sign_test(o).verdict} |"
            for c, o in sorted(per_c.items())
        ),
        f"| each at its best c | {overall.text()} | {median(best_ratios)} | {overall.verdict} |",
        "",
        "Each method at its best c, per data set (f − f* at the rounding level of f* shows as "
        "that level; inf: diverged):",
        "",
        "| data set | AM-MGD | MGD | ratio | outcome |",
        "|---|---|---|---|---|",
        *picks,
    ]
    return row


def median(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{float(np.median(finite)):.3g}" if finite else "–"


def oscillation_rates(am: Run, mgd: Run) -> tuple[int, int, int, int]:
    """(low-beta steps, steps) of AM-MGD at the updates where MGD's loss went up, then the same
    at the other updates. Update t takes x_{t-1} to x_t; only updates where both runs' gaps
    are finite and above the rounding level of f* count (below it, beta follows rounding)."""
    gaps = {}
    for run in (am, mgd):
        it, gap = run.series("objective_gap")
        level = rounding_level(run)
        gaps[run.method] = {t: g for t, g in zip(it.tolist(), gap.tolist()) if level < g < math.inf}
    steps, betas = am.betas()
    low_limit = float(am.cfg.optimizer.beta_max) / 2
    counts = [0, 0, 0, 0]
    for s, b in zip(steps.tolist(), betas.tolist()):
        before, after = gaps["mgd"].get(s - 1), gaps["mgd"].get(s)
        if before is None or after is None or s - 1 not in gaps["am_mgd"]:
            continue
        i = 0 if after > before else 2
        counts[i] += b < low_limit
        counts[i + 1] += 1
    return counts[0], counts[1], counts[2], counts[3]


def claim_soft_restarts(src: Sources, row: Row) -> Row:
    """Per problem, pooled over c: AM-MGD's share of low beta (< beta_max / 2) at the updates
    where MGD beta=0.9's loss went up is higher than at the other updates."""
    problems: dict[str, list[tuple[Run, Run]]] = defaultdict(list)
    found, notes = runs_of(src, row.artifacts)
    for artifact, runs in found.items():
        key = lambda r: (str(r.cfg.dataset.get("name") or "quadratic"), lr_scale(r))  # noqa: E731
        am = {
            key(r): r
            for r in runs
            if r.method == "am_mgd" and r.cfg.optimizer.get("plane_bias") == "exact"
        }
        for r in runs:
            if r.method == "mgd" and float(r.cfg.optimizer.momentum) == 0.9 and key(r) in am:
                label = f"{artifact}: {key(r)[0]}"
                problems[label].append((am[key(r)], r))
    if not problems:
        raise NotAvailable("no problem has both AM-MGD (exact plane bias) and MGD β=0.9 runs")
    outcomes, lines, pooled = [], [], np.zeros(4, dtype=np.int64)
    for label, pairs in sorted(problems.items()):
        counts = np.zeros(4, dtype=np.int64)
        for am_run, mgd_run in pairs:
            counts += oscillation_rates(am_run, mgd_run)
        pooled += counts
        up = counts[0] / counts[1] if counts[1] else math.nan
        other = counts[2] / counts[3] if counts[3] else math.nan
        outcomes.append(0 if not counts[1] or up == other else 1 if up > other else -1)
        lines.append(
            f"| {label} | {len(pairs)} | {counts[0]} of {counts[1]} ({rate(up)}) | "
            f"{counts[2]} of {counts[3]} ({rate(other)}) |"
        )
    test = sign_test(outcomes)
    row.effect = (
        "share of AM-MGD's updates with β_t < β_max/2 where MGD β=0.9's loss went up vs at its "
        f"other updates (same problem and c, pooled over c): {rate(pooled[0] / max(pooled[1], 1))} "
        f"vs {rate(pooled[2] / max(pooled[3], 1))} in all; problems where it is higher: "
        f"{test.text()}" + "".join(f"; {n}" for n in notes)
    )
    row.n = f"{len(outcomes)} problems"
    row.verdict = test.verdict
    row.details = [
        "| problem | c values | low β where MGD's loss went up | low β elsewhere |",
        "|---|---|---|---|",
        *lines,
        "",
        "Updates where either run's f − f* is at the rounding level of f* (or not finite) are left "
        "out; a problem without any increase of MGD's loss is a tie.",
    ]
    return row


def rate(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.1%}"


# ---------------------------------------------------------------- the report

CLAIMS: list[tuple[str, list[str], Callable[[Sources, Row], Row]]] = [
    (
        "AM-MGD beats MGD β=0.9 on logistic regression (sec. 4.1, Fig. 3)",
        ["figure3"],
        lambda s, r: claim_convex(s, r, "0.9"),
    ),
    (
        f"AM-MGD is competitive with MGD at the grid-tuned β* (sec. 4.1, Fig. 3): f − f* within "
        f"{BETA_STAR_FACTOR:g}×",
        ["figure3"],
        lambda s, r: claim_convex(s, r, "beta*"),
    ),
    (
        'β_t drops ("soft restarts") where fixed momentum oscillates (sec. 4.2, 4.5; Fig. 1, 3)',
        ["figure1", "figure3"],
        claim_soft_restarts,
    ),
    (
        "AM-MGD beats MGD in image classification (sec. 4.2, Fig. 4, app. F.4)",
        ["figure4", "figure_imagenet"],
        claim_vision,
    ),
    (
        "AM-MGD widens the range of learning rates that train (sec. 4.6, Fig. 7c)",
        ["figure7"],
        claim_lr_range,
    ),
    (
        f"AM-MGD is robust to λ (sec. 4.6, Fig. 7a): within {ABLATION_MARGIN:g} pp of λ = 0.1",
        ["figure7"],
        lambda s, r: claim_ablation(s, r, "lam"),
    ),
    (
        "AM-MGD's gain is robust to the batch size (sec. 4.6, Fig. 7b): within "
        f"{ABLATION_MARGIN:g} pp of the gain at the default batch",
        ["figure7"],
        lambda s, r: claim_ablation(s, r, "batch_size"),
    ),
    (
        "AM-AdamW beats AdamW in LLM pretraining (sec. 4.3, Fig. 5)",
        ["figure5"],
        llm_pair("figure5", "am_adamw", "adamw"),
    ),
    (
        "AM-AdamW without warmup is about as good as AdamW with warmup (sec. 4.3): within "
        f"{WARMUP_MARGIN:g} nats",
        ["figure5"],
        claim_warmup,
    ),
    (
        "Per-layer β is slightly better than one global β (app. D.3, Table 5)",
        ["table5"],
        llm_pair("table5", "am_adamw", "am_adamw_global"),
    ),
    (
        "Restarts explain part, but not all, of the gain (sec. 4.5, Table 6)",
        ["table6"],
        claim_restarts,
    ),
    (
        f"AM-AdamW's overhead per iteration is under {OVERHEAD_LIMIT:g} % (sec. 4.4, app. D.4, Table 2)",
        ["table2"],
        claim_overhead,
    ),
]


def evaluate(src: Sources) -> list[Row]:
    """One row per claim; a claim whose runs are missing says so (inconclusive)."""
    rows = []
    for text, artifacts, measure in CLAIMS:
        row = Row(text, artifacts)
        try:
            row = measure(src, row)
        except NotAvailable as err:
            row.effect, row.verdict = str(err), INCONCLUSIVE
        except (FileNotFoundError, ValueError) as err:  # runs on disk that cannot be compared
            row.effect, row.verdict = f"cannot be measured: {err}", INCONCLUSIVE
        rows.append(row)
    return rows


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def sources_text(src: Sources) -> list[str]:
    """Which run of each artifact the report read: its provenance's date and code version."""
    lines = []
    for artifact in sorted({a for _, arts, _ in CLAIMS for a in arts}):
        prov = src.provenance(artifact)
        if not prov.exists():
            lines.append(f"- {artifact}: not made at this scale")
            continue
        p = json.loads(prov.read_text())
        git = p.get("git") or {}
        dirty = " (dirty)" if git.get("dirty") else ""
        lines.append(
            f"- {src.link(artifact)}: {len(p.get('run_dirs', []))} runs, made {p.get('date')} "
            f"from git {str(git.get('sha'))[:10]}{dirty}"
        )
    return lines


def report(src: Sources) -> str:
    rows = evaluate(src)
    counts = {
        v: sum(r.verdict == v for r in rows) for v in (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE)
    }
    lines = [
        f"# Claims of the paper at {src.scale} scale",
        "",
        f"Generated by `python -m experiments.claims --scale {src.scale}` (`make claims "
        f"SCALE={src.scale}`) from the runs on disk; do not edit. "
        + ", ".join(f"{n} {v}" for v, n in counts.items())
        + f" of {len(rows)} claims.",
        "",
        rule_text(),
        "",
        "## Claims",
        "",
        "| # | claim (paper) | artifact | measured effect at this scale | n | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        links = ", ".join(src.link(a) for a in r.artifacts)
        lines.append(
            f"| {i} | {cell(r.claim)} | {links} | {cell(r.effect)} | {r.n or '–'} | **{r.verdict}** |"
        )
    for i, r in enumerate(rows, 1):
        if r.details:
            lines += ["", f"### Claim {i}: {r.claim}", "", *r.details]
    lines += ["", "## Sources", "", *sources_text(src)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", required=True, choices=["smoke", "reduced", "paper"])
    parser.add_argument("--results-dir", type=Path, default=Path("results"))
    parser.add_argument(
        "--runs-root",
        type=Path,
        default=None,
        help="where the provenance files' relative run_dirs start (default: the folder that "
        "holds --results-dir)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="default: <results-dir>/claims/<scale>/CLAIMS.md"
    )
    args = parser.parse_args(argv)
    results = args.results_dir.resolve()
    out = args.out or results / "claims" / args.scale / "CLAIMS.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    src = Sources(
        results, (args.runs_root or results.parent).resolve(), args.scale, out.parent.resolve()
    )
    out.write_text(report(src))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
