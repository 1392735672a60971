"""What the claims report measures, claim by claim: each function takes the runs of the
artifacts a claim names (``Sources``) and fills its ``Row``. The comparisons are the artifacts'
own: convex problems through ``experiments._stepsize`` (``compare_runs``, ``best_setting``, the
problems named by ``problem_name``), seeded runs through ``experiments._stats`` (``compare``,
``sign_test``, ``verdict``), LLM values through ``experiments._llm``; nothing here re-derives
what an artifact computes.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from experiments import Run
from experiments._llm import (
    clock_drift,
    final_eval_loss,
    overhead_pct,
    size_label,
    time_per_iteration,
    warmup,
)
from experiments._stats import (
    Comparison,
    Estimate,
    SeedValues,
    Verdict,
    combine,
    combine_verdicts,
    compare,
    estimate,
    per_seed,
    run_diverged,
    sign_test,
    verdict,
)
from experiments._stepsize import (
    MGD_BETA,
    Outcome,
    SetRuns,
    best_of_grid,
    best_step,
    budgets,
    collect,
    compare_runs,
    on_edge,
    problem_name,
    rounding_level,
)
from experiments._vision import WORKING_FRACTION, any_stand_in, working_threshold
from experiments._vision import setting as vision_setting

# Margins of the "about as good" claims.
BETA_STAR_FACTOR = 2.0  # "competitive with beta*": f - f* at most 2x MGD beta*'s
ABLATION_MARGIN = 1.0  # percentage points of test accuracy: "robust to lambda / batch size"
OVERHEAD_LIMIT = 0.5  # percent: "overhead per iteration under 0.5 %"
WARMUP_SHARE = 0.5  # claim 9: AM-AdamW without warmup recovers at least half of AdamW's gain
LOW_BETA = 0.5  # "soft restart": beta_t below this fraction of beta_max


class ArtifactNotMade(Exception):
    """The artifact was not made at this scale (no provenance.json): the row says so."""


class RunsMissing(Exception):
    """An artifact's provenance lists runs that are not on disk: the report is not written."""

    def __init__(self, artifact: str, missing: list[Path], listed: int, scale: str) -> None:
        self.artifact, self.missing, self.listed, self.scale = artifact, missing, listed, scale
        super().__init__(
            f"{artifact}: {len(missing)} of {listed} runs listed in its provenance.json are "
            f"not on disk (e.g. {missing[0]}): make {artifact} SCALE={scale}"
        )


class RunSource(Protocol):
    scale: str

    def runs(self, artifact: str) -> list[Run]: ...


@dataclass
class Row:
    """One claim of the paper: the paper's number, what the runs measure, and a verdict."""

    claim: str
    artifacts: list[str]
    paper: str = "–"
    effect: str = ""
    n: str = ""
    verdict: Verdict = Verdict.INCONCLUSIVE
    reason: str = ""  # why a row is inconclusive when no interval says so
    details: list[str] = field(default_factory=list)
    # per setting: the paired per-seed differences (the power analysis reads them)
    comparisons: list[Comparison] = field(default_factory=list)
    paper_effect: float | None = None  # the paper's gain in the claim's unit, if it gives one


def fill(row: Row, comparisons: list[Comparison], what: str) -> Row:
    """The row from its settings' comparisons (``what``: the number compared)."""
    if not comparisons:
        row.reason = "no setting has both methods' runs"
        return row
    row.effect = f"{what}<br>" + "<br>".join(c.text() for c in comparisons)
    seeds = sorted({c.diff.n for c in comparisons})
    row.n = f"{'/'.join(map(str, seeds))} seeds × {len(comparisons)} setting(s)"
    row.verdict = combine_verdicts(c.verdict for c in comparisons)
    row.comparisons += comparisons
    return row


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
    paper: float | None = None,
    margin: float = 0.0,
) -> list[Comparison]:
    """``am`` vs ``base`` in every setting that ran both."""
    return [
        compare(
            s,
            per_seed(m[am], value),
            per_seed(m[base], value),
            better=better,
            paper=paper,
            margin=margin,
            stand_in=any_stand_in(m[am] + m[base]),
        )
        for s, m in sorted(groups.items())
        if am in m and base in m
    ]


def available(src: RunSource, artifacts: Iterable[str]) -> tuple[dict[str, list[Run]], list[str]]:
    """The runs of those ``artifacts`` made at this scale, and a note for each one not made."""
    found, notes = {}, []
    for artifact in artifacts:
        try:
            found[artifact] = src.runs(artifact)
        except ArtifactNotMade as err:
            notes.append(str(err))
    if not found:
        raise ArtifactNotMade("; ".join(notes))
    return found, notes


# ---------------------------------------------------------------- convex (deterministic)


def convex_sets(src: RunSource) -> tuple[dict[str, SetRuns], int]:
    """figure3's runs per problem (``_stepsize.collect``) and the last budget."""
    runs = src.runs("figure3")
    return collect(runs), budgets(runs)[-1]


def claim_convex(src: RunSource, row: Row, against: str) -> Row:
    """AM-MGD vs MGD beta = 0.9 (``against="0.9"``) or vs the grid's best beta* (``"beta*"``),
    per problem, each method at its own best c (and beta*), by ``_stepsize.compare_runs`` (the
    gap at the budget, ties broken by time to target). An optimum on a grid edge has not been
    tuned: a win over a baseline tuned to its edge, or a loss of AM-MGD at its own edge, is not
    evidence and is left out (listed)."""
    sets, t = convex_sets(src)
    factor = BETA_STAR_FACTOR if against == "beta*" else 1.0
    outcomes, lines, edges = [], [], []
    for name, s in sets.items():
        cs = s.scales()
        momenta = sorted({b for grid in s.grid.values() for b in grid})
        am = best_step(s.am, t)
        if against == "beta*":
            star = best_of_grid(s, t)
            base = None if star is None else (star[0], star[2])
            base_edge = star is not None and (on_edge(star[0], cs) or on_edge(star[1], momenta))
            base_label = "" if star is None else f"c={star[0]:g}, β={star[1]:g}"
        else:
            fixed = {c: g[MGD_BETA] for c, g in s.grid.items() if MGD_BETA in g}
            base = best_step(fixed, t)
            base_edge = base is not None and on_edge(base[0], cs)
            base_label = "" if base is None else f"c={base[0]:g}"
        if am is None or base is None:
            continue
        found = compare_runs(am[1], base[1], t, factor)
        am_edge = on_edge(am[0], cs)
        excluded = (found == Outcome.AHEAD and base_edge) or (found == Outcome.BEHIND and am_edge)
        if excluded:
            edges.append(name)
        else:
            outcomes.append(int(found))
        word = {1: "ahead" if factor == 1 else "within", 0: "tie", -1: "behind"}[int(found)]
        flags = [f for f, on in (("AM-MGD's c on the grid edge", am_edge),
                                 ("baseline on the grid edge", base_edge)) if on]  # fmt: skip
        lines.append(
            f"| {name} | c={am[0]:g} | {base_label} | {word}"
            + (f" (left out: {', '.join(flags)})" if excluded else "")
            + (f"; {', '.join(flags)}" if flags and not excluded else "")
            + " |"
        )
    if not lines:
        row.reason = "figure3 has no problem with both AM-MGD and MGD runs"
        return row
    test = sign_test(outcomes)
    way = "AM-MGD ahead of MGD β=0.9" if factor == 1 else f"within {factor:g}× of MGD β*"
    row.effect = (
        f"{way}, each at its best c after {t} iterations (gap, then time to target): "
        f"{test.text()}"
        + (f"; left out (an optimum on a grid edge): {', '.join(edges)}" if edges else "")
    )
    row.n = f"{len(outcomes)} of {len(lines)} problems decide"
    row.verdict = test.verdict
    row.details = [
        "| problem | AM-MGD best | baseline best | outcome |",
        "|---|---|---|---|",
        *lines,
        "",
        "The comparison is `experiments._stepsize.compare_runs`, the one figure3's stepsize.md "
        "counts with; f − f* and time to target per problem: figure3's stepsize.md.",
    ]
    return row


def mgd_oscillates(run: Run) -> bool:
    """MGD's f - f* went up at some update while above the rounding level of f*."""
    it, gap = run.series("objective_gap")
    level = rounding_level(run)
    keep = np.isfinite(gap) & (gap > level)
    g = gap[keep]
    return bool(len(g) > 1 and np.any(np.diff(g) > 0))


def low_beta_share(run: Run, after: float = 0.0, before: float = 1.0) -> float:
    """The share of steps in the fraction [after, before) of the run with beta_t below
    LOW_BETA x beta_max (a soft restart); NaN when there are none."""
    steps, beta = run.betas()
    if not len(steps):
        return math.nan
    top = float(run.cfg.optimizer.get("beta_max", 0.9))
    total = int(run.cfg.trainer.max_steps)
    keep = (steps >= after * total) & (steps < before * total)
    return float(np.mean(beta[keep] < LOW_BETA * top)) if keep.any() else math.nan


def claim_soft_restarts(src: RunSource, row: Row) -> Row:
    """Two measures. Vision (where the paper shows it, Fig. 4's beta trace: "initially stable,
    then oscillating between 0 and beta_max"): per seed, AM-MGD's share of soft restarts in the
    second half of training minus in the first 10 %, paired over seeds. Convex (Fig. 1, 3):
    per problem, AM-MGD's share of soft restarts at the step sizes where MGD beta = 0.9
    oscillates (its f - f* goes up) against those where it does not; a sign test over the
    problems that have both kinds."""
    found, notes = available(src, row.artifacts)
    comparisons: list[Comparison] = []
    if "figure4" in found:
        for setting, methods in sorted(cells(found["figure4"], vision_setting).items()):
            am = methods.get("am_mgd", [])
            if not am:
                continue
            late = per_seed(am, lambda r: low_beta_share(r, after=0.5))
            early = per_seed(am, lambda r: low_beta_share(r, before=0.1))
            comparisons.append(
                compare(
                    f"{setting}: late − early",
                    late,
                    early,
                    better="higher",
                    stand_in=any_stand_in(am),
                )  # fmt: skip
            )
    convex_lines, outcomes = [], []
    for artifact in ("figure1", "figure3"):
        if artifact not in found:
            continue
        by_problem: dict[str, dict[float, dict[str, Run]]] = defaultdict(lambda: defaultdict(dict))
        for r in found[artifact]:
            key = float(r.cfg.optimizer.get("lr_scale", 1.0))
            if r.method == "am_mgd" and r.cfg.optimizer.get("plane_bias") == "exact":
                by_problem[problem_name(r)][key]["am"] = r
            elif r.method == "mgd" and float(r.cfg.optimizer.momentum) == MGD_BETA:
                by_problem[problem_name(r)][key]["mgd"] = r
        for name, per_c in sorted(by_problem.items()):
            osc: list[float] = []
            calm: list[float] = []
            for pair in per_c.values():
                if {"am", "mgd"} <= set(pair):
                    share = low_beta_share(pair["am"])
                    (osc if mgd_oscillates(pair["mgd"]) else calm).append(share)
            if osc and calm:
                up, flat = float(np.nanmean(osc)), float(np.nanmean(calm))
                outcomes.append(1 if up > flat else -1 if up < flat else 0)
                convex_lines.append(
                    f"| {artifact}: {name} | {up:.1%} ({len(osc)} c) | {flat:.1%} ({len(calm)} c) |"
                )
            else:
                convex_lines.append(
                    f"| {artifact}: {name} | MGD oscillates at {len(osc)} c, not at {len(calm)} c: "
                    "no contrast | – |"
                )
    parts, verdicts = [], []
    if comparisons:
        parts.append(
            f"vision, share of steps with β_t < {LOW_BETA:g} β_max, second half − first 10 % of "
            "training (per seed): " + "; ".join(c.text() for c in comparisons)
        )
        verdicts += [c.verdict for c in comparisons]
        row.comparisons += comparisons
    if convex_lines:
        test = sign_test(outcomes)
        parts.append(
            "convex, problems where AM-MGD's soft restarts are more frequent at the step sizes "
            f"where MGD β=0.9 oscillates: {test.text()}"
        )
        verdicts.append(test.verdict)
        row.details = [
            "| problem | AM-MGD soft restarts where MGD oscillates | where it does not |",
            "|---|---|---|",
            *convex_lines,
        ]
    if not parts:
        row.reason = "no AM-MGD runs with a β trace"
        return row
    row.effect = "<br>".join(parts + notes)
    row.n = " + ".join(
        ([f"{comparisons[0].diff.n} seeds"] if comparisons else [])
        + ([f"{sum(o != 0 for o in outcomes)} problems"] if convex_lines else [])
    )
    row.verdict = combine_verdicts(verdicts)
    return row


# ---------------------------------------------------------------- vision (seeded)


def accuracy(run: Run) -> float:
    """Final evaluation accuracy in percent."""
    return 100.0 * run.final("eval_accuracy")


def claim_vision(src: RunSource, row: Row) -> Row:
    """Figure 4 (CIFAR; reduced: MNIST) and the ImageNet figure, where made."""
    found, notes = available(src, row.artifacts)
    groups = cells((r for runs in found.values() for r in runs), vision_setting)
    pairs = method_pairs(groups, "am_mgd", "mgd", accuracy, better="higher")
    what = "final evaluation accuracy, AM-MGD − MGD (percentage points):"
    return fill(row, pairs, " ".join([what, *(f"({n})" for n in notes)]))


def ablation_runs(src: RunSource) -> tuple[list[Run], dict[str, float]]:
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


def claim_lr_range(src: RunSource, row: Row) -> Row:
    runs, defaults = ablation_runs(src)
    grid = [r for r in runs if at_default(r, defaults, "lr")]
    comparisons = []
    for setting, methods in sorted(cells(grid, vision_setting).items()):
        if not {"am_mgd", "mgd"} <= set(methods):
            continue
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
                stand_in=any_stand_in([r for rs in methods.values() for r in rs]),
            )
        )
    what = (
        f"learning rates that train (final test accuracy ≥ {WORKING_FRACTION:.0%} of the best run "
        "of the grid), AM-MGD − MGD, per seed:"
    )
    return fill(row, comparisons, what)


def gain(am: list[Run], base: list[Run]) -> dict[int, float]:
    """{seed: AM's accuracy - the baseline's, same seed} (NaN where either diverged)."""
    return combine(per_seed(am, accuracy), per_seed(base, accuracy), lambda a, b: a - b)


def claim_ablation(src: RunSource, row: Row, free: str) -> Row:
    """7a (``free="lam"``: AM-MGD at each lambda vs at the default) or 7b (``"batch_size"``:
    AM-MGD − MGD at each batch size vs that gain at the default batch)."""
    runs, defaults = ablation_runs(src)
    grid = [r for r in runs if at_default(r, defaults, free)]
    value_of: Callable[[Run], float] = (
        (lambda r: float(r.cfg.optimizer.get("lam", math.nan)))
        if free == "lam"
        else (lambda r: float(r.cfg.dataset.batch_size))
    )
    comparisons = []
    for setting, methods in sorted(cells(grid, vision_setting).items()):
        fake = any_stand_in([r for rs in methods.values() for r in rs])
        am: dict[float, list[Run]] = defaultdict(list)
        for r in methods.get("am_mgd", []):
            am[value_of(r)].append(r)
        if free == "lam":
            base = per_seed(am.get(defaults[free], []), accuracy)
            for v in sorted(set(am) - {defaults[free]}):
                comparisons.append(
                    compare(
                        f"{setting}, λ={v:g} vs λ={defaults[free]:g}",
                        per_seed(am[v], accuracy),
                        base,
                        better="higher",
                        margin=ABLATION_MARGIN,
                        stand_in=fake,
                    )  # fmt: skip
                )
            continue
        mgd: dict[float, list[Run]] = defaultdict(list)
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
                )  # fmt: skip
            )
    if not comparisons:
        row.reason = (
            f"not in this scale's sweep: figure7 at {src.scale} varies no {free} "
            "(configs/experiment/figure7.yaml)"
        )
        return row
    what = (
        f"final test accuracy of AM-MGD at each λ − at the default λ (pp), margin −{ABLATION_MARGIN:g} pp:"
        if free == "lam"
        else "AM-MGD's gain over MGD (test accuracy, pp) at each batch size − the gain at the "
        f"default batch, margin −{ABLATION_MARGIN:g} pp:"
    )
    return fill(row, comparisons, what)


# ---------------------------------------------------------------- LLM (seeded)


def llm_setting(run: Run) -> str:
    w = warmup(run)
    return f"{size_label(run)}, {f'warmup {w}' if w else 'no warmup'}"


def llm_pair(
    artifact: str, am: str, base: str, paper: float | None = None
) -> Callable[[RunSource, Row], Row]:
    """A claim "``am`` beats ``base``" on the final evaluation loss of the artifact's LLM runs,
    in every model size and warmup regime (``paper``: the paper's gain in nats)."""

    def measure(src: RunSource, row: Row) -> Row:
        groups = cells(src.runs(artifact), llm_setting)
        found = method_pairs(groups, am, base, final_eval_loss, better="lower", paper=paper)
        return fill(row, found, f"final evaluation loss, {am} − {base} (nats):")

    return measure


def claim_warmup(src: RunSource, row: Row) -> Row:
    """Restated against AdamW's own warmup gain G = AdamW without − AdamW with warmup: AM-AdamW
    without warmup recovers at least WARMUP_SHARE of it, i.e. per seed
    (AdamW without − AM-AdamW without) − WARMUP_SHARE x G > 0. First G itself must be there;
    where warmup does not help AdamW the claim has nothing to test."""
    runs = src.runs("figure5")
    comparisons, parts = [], []
    for size in sorted({size_label(r) for r in runs}):
        mine = [r for r in runs if size_label(r) == size]
        adamw_w = per_seed([r for r in mine if r.method == "adamw" and warmup(r)], final_eval_loss)
        adamw_0 = per_seed(
            [r for r in mine if r.method == "adamw" and not warmup(r)], final_eval_loss
        )
        am_0 = per_seed(
            [r for r in mine if r.method == "am_adamw" and not warmup(r)], final_eval_loss
        )
        if not (adamw_w and adamw_0 and am_0):
            continue
        warm_gain = compare(f"{size}: AdamW's warmup gain", adamw_0, adamw_w, better="higher")
        parts.append(warm_gain.text())
        if not warm_gain.verdict.supported:
            row.reason = f"{size}: warmup does not help AdamW here, so there is no gap to recover"
            continue
        recovered = combine(adamw_0, am_0, lambda a, b: a - b)
        g = combine(adamw_0, adamw_w, lambda a, b: a - b)
        test = compare(
            f"{size}: (AdamW − AM-AdamW, no warmup) − {WARMUP_SHARE:g} × warmup gain",
            combine(recovered, g, lambda r, w: r - WARMUP_SHARE * w),
            {s: 0.0 for s in g},
            better="higher",
        )
        share = estimate(recovered.values()).mean / estimate(g.values()).mean
        parts.append(f"{test.text()}; share recovered {share:.2f} (paper: about 1)")
        comparisons.append(test)
    if not parts:
        row.reason = "figure5 has no size with AdamW in both regimes and AM-AdamW without warmup"
        return row
    row.effect = "final evaluation loss (nats): " + "<br>".join(parts)
    if comparisons:
        row.verdict = combine_verdicts(c.verdict for c in comparisons)
        row.n = f"{comparisons[0].diff.n} seeds × {len(comparisons)} size(s)"
        row.comparisons += comparisons
    return row


def claim_restarts(src: RunSource, row: Row) -> Row:
    """Table 6: first AM-AdamW's gain over AdamW must exist; then restarts explain part of it
    (Restart beats AdamW) but not all (AM-AdamW beats Restart). Clip is shown beside them."""
    groups = cells(src.runs("table6"), llm_setting)
    gain_am = method_pairs(groups, "am_adamw", "adamw", final_eval_loss, better="lower")
    part = method_pairs(groups, "am_adamw_restart", "adamw", final_eval_loss, better="lower")
    rest = method_pairs(groups, "am_adamw", "am_adamw_restart", final_eval_loss, better="lower")
    clip = method_pairs(groups, "am_adamw_clip", "adamw", final_eval_loss, better="lower")
    for name, found in (("AM-AdamW − AdamW", gain_am), ("Restart − AdamW", part),
                        ("AM-AdamW − Restart", rest), ("Clip − AdamW", clip)):  # fmt: skip
        for c in found:
            c.setting = f"{name}, {c.setting}"
    row = fill(row, gain_am + part + rest + clip, "final evaluation loss (nats):")
    row.comparisons = gain_am + part + rest
    if not gain_am:
        return row
    if not all(c.verdict.supported for c in gain_am):
        row.verdict = Verdict.INCONCLUSIVE
        row.reason = "no gain to explain: AM-AdamW does not beat AdamW here"
        return row
    row.verdict = combine_verdicts(c.verdict for c in part + rest)
    return row


def clock_resolves(drift: Estimate) -> bool:
    """Whether separate runs' wall clocks can decide a claim about OVERHEAD_LIMIT %: the
    negative control's whole interval lies within ± that limit."""
    return (
        drift.n >= 2
        and math.isfinite(drift.lo)
        and -OVERHEAD_LIMIT <= drift.lo
        and drift.hi <= OVERHEAD_LIMIT
    )


def bench_overhead(results_dir: Path, device: str = "cpu") -> list[tuple[str, Estimate]]:
    """AM-AdamW's overhead per iteration from the interleaved benchmark
    (results/bench_train/train_step_<device>.json): per model size and scope, the t-interval
    over the rounds of the per-round ratio to AdamW. Empty when there is no benchmark, or it
    predates per-round records."""
    path = results_dir / "bench_train" / f"train_step_{device}.json"
    if not path.exists():
        return []
    out = []
    for row in json.loads(path.read_text()).get("rows", []):
        rounds = row.get("overhead_pct_rounds")
        if rounds and "AM-AdamW" in row["optimizer"]:
            out.append((f"{row['size']}, {row['optimizer']} (bench)", estimate(rounds)))
    return out


def claim_overhead(src: RunSource, row: Row, results_dir: Path | None = None) -> Row:
    """Table 2's runs decide only when their clock is steadier than the claim: AdamW in two
    warmup regimes (the same arithmetic per step) is the negative control. Without a control
    that resolves, the interleaved benchmark decides (``make bench``), or nothing does."""
    by_size: dict[str, dict[int, dict[str, list[Run]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for r in src.runs("table2"):
        by_size[size_label(r)][warmup(r)][r.method].append(r)
    comparisons, controls, unresolved = [], [], False
    for size, regimes in sorted(by_size.items()):
        drift = clock_drift({w: m["adamw"] for w, m in regimes.items() if m.get("adamw")})
        resolves = drift is not None and clock_resolves(drift)
        unresolved |= not resolves
        if drift is not None:
            controls.append(
                f"{size}, AdamW warmup {min(regimes)} over warmup {sorted(regimes)[1]}: "
                f"{drift.format_interval()} → "
                + (f"within ±{OVERHEAD_LIMIT:g} %" if resolves else f"beyond ±{OVERHEAD_LIMIT:g} %")
            )
        else:
            controls.append(f"{size}: no negative control (AdamW ran in one warmup regime)")
        for _, methods in sorted(regimes.items(), reverse=True):
            if not {"am_adamw", "adamw"} <= set(methods):
                continue
            pct = overhead_pct(
                per_seed(methods["am_adamw"], time_per_iteration),
                per_seed(methods["adamw"], time_per_iteration),
            )
            found = verdict(pct, better="lower", margin=OVERHEAD_LIMIT)
            setting = llm_setting(methods["adamw"][0])
            comparisons.append(
                Comparison(setting, SeedValues(), pct, found if resolves else Verdict.INCONCLUSIVE)
            )
    what = (
        "time per iteration of AM-AdamW / AdamW − 1 (%), per seed, from the table2 runs' wall "
        "clock (median seconds per update, evaluations left out); supported when the interval "
        f"is below {OVERHEAD_LIMIT:g} %, if the negative control allows:"
    )
    row = fill(row, comparisons, what)
    row.comparisons = []  # timings: not a quantity the seeds' power analysis is about
    row.effect += "<br>negative control (the clock's drift between separate runs, %): " + "; ".join(
        controls
    )
    if unresolved:
        bench = bench_overhead(results_dir) if results_dir is not None else []
        if bench:
            decided = [verdict(e, better="lower", margin=OVERHEAD_LIMIT) for _, e in bench]
            row.verdict = combine_verdicts(decided)
            row.effect += (
                "<br>the runs' clock does not resolve the claim, so the interleaved benchmark "
                "decides (results/bench_train/, over its rounds): "
                + "; ".join(
                    f"{name}: {e.format_interval(2)} → {v}" for (name, e), v in zip(bench, decided)
                )
            )
        else:
            row.verdict = Verdict.INCONCLUSIVE
            row.reason = (
                "the runs' wall clock cannot resolve ±0.5 % and there is no interleaved "
                "benchmark with per-round records (make bench)"
            )
    return row
