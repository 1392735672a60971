"""Saving the artifacts' figures: every one as .png and .pdf, and only when it can be read.

``save_figure`` refuses (``FigureLayoutError``) a figure whose title, axis label or legend
falls outside its canvas (a clipped line of a title is a note the reader never sees), or that
draws a reference line (``axhline`` / ``axvline``) no legend names.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backend_bases import RendererBase
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

TOLERANCE_PX = 1.0  # antialiasing may reach a pixel past the edge


class FigureLayoutError(ValueError):
    """A figure would hide part of its text, or draw a line nothing explains."""


def save_figure(fig: Figure, out_dir: Path, stem: str, dpi: int = 150) -> None:
    """``out_dir/<stem>.png`` and ``.pdf``, after ``check_readable``."""
    check_readable(fig, stem)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / f"{stem}.png", dpi=dpi)
    fig.savefig(out_dir / f"{stem}.pdf")


def suptitle_fitted(fig: Figure, text: str, fontsize: float = 10) -> None:
    """``fig.suptitle`` with each line wrapped to the figure's width (a narrow figure, e.g. at
    smoke scale with one panel, would clip a long caption)."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (0.6 * fontsize)))  # ~0.6 em per glyph
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, per_line) or [""]]
    fig.suptitle("\n".join(lines), fontsize=fontsize)


def legend_unique(ax: Axes, **kwargs: Any) -> None:
    """A legend with one entry per label (lines drawn several times under one name)."""
    handles, labels = ax.get_legend_handles_labels()
    first = dict(zip(labels, handles))  # later duplicates dropped, order kept
    ax.legend(list(first.values()), list(first), **kwargs)


def check_readable(fig: Figure, name: str) -> None:
    """Raise naming every text outside the canvas and every reference line without a legend."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # runs the layout engine, as savefig does
    renderer = canvas.get_renderer()
    problems = [f"{what} falls outside the canvas" for what in _outside(fig, renderer)]
    problems += [f"{what} is in no legend" for what in _unexplained_lines(fig)]
    if problems:
        raise FigureLayoutError(
            f"figure {name}: " + "; ".join(problems) + ". Give the figure layout='constrained' "
            "(or more room), shorten the text, or label the line and draw a legend."
        )


def _texts(fig: Figure) -> list[tuple[str, Artist]]:
    found: list[tuple[str, Artist]] = []
    suptitle = getattr(fig, "_suptitle", None)  # matplotlib has no public getter
    if suptitle is not None:
        found.append(("the title", suptitle))
    found += [(f"the figure legend {i}", legend) for i, legend in enumerate(fig.legends)]
    found += [(f"the text {t.get_text()!r}", t) for t in fig.texts if t is not suptitle]
    for i, ax in enumerate(fig.axes):
        where = f"panel {i + 1}"
        titles = [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)]
        found += [(f"the title of {where}", t) for t in titles if t is not None]
        found += [
            (f"the x label of {where}", ax.xaxis.label),
            (f"the y label of {where}", ax.yaxis.label),
        ]
        legend = ax.get_legend()
        if legend is not None:
            found.append((f"the legend of {where}", legend))
    return found


def _outside(fig: Figure, renderer: RendererBase) -> list[str]:
    box = fig.bbox
    out = []
    for what, artist in _texts(fig):
        if not artist.get_visible() or (hasattr(artist, "get_text") and not artist.get_text()):
            continue
        ext = artist.get_window_extent(renderer)
        if (
            ext.x0 < box.x0 - TOLERANCE_PX
            or ext.y0 < box.y0 - TOLERANCE_PX
            or ext.x1 > box.x1 + TOLERANCE_PX
            or ext.y1 > box.y1 + TOLERANCE_PX
        ):
            out.append(what)
    return out


def _reference_lines(ax: Axes) -> list[Line2D]:
    """Lines drawn across the panel (axhline / axvline: not in data coordinates)."""
    return [line for line in ax.get_lines() if line.get_transform() != ax.transData]


def _unexplained_lines(fig: Figure) -> list[str]:
    out = []
    for i, ax in enumerate(fig.axes):
        legend = ax.get_legend()
        named = {t.get_text() for t in legend.get_texts()} if legend is not None else set()
        for line in _reference_lines(ax):
            label = str(line.get_label())
            if label.startswith("_") or label not in named:
                out.append(f"a reference line of panel {i + 1} ({label!r})")
    return out
