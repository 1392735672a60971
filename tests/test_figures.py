"""Every artifact's figures go through experiments._figures.save_figure, which refuses a figure
that would clip its text or draw a line no legend explains (the artifact tests draw them all)."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.figure import Figure

from experiments._figures import FigureLayoutError, save_figure, suptitle_fitted

LONG_CAPTION = "a curve stops where f − f* reaches the rounding level of f*, " * 3


def panel(layout: str | None = "constrained") -> tuple[Figure, object]:
    fig = Figure(figsize=(4.2, 3.6), layout=layout)
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [3, 1, 2], label="AM-MGD")
    return fig, ax


def test_a_figure_that_fits_is_saved(tmp_path: Path) -> None:
    fig, ax = panel()
    ax.axhline(2.5, color="k", label="diverged")
    ax.legend()
    suptitle_fitted(fig, f"Figure 3 (smoke scale)\n{LONG_CAPTION}")
    save_figure(fig, tmp_path, "ok")
    assert (tmp_path / "ok.png").stat().st_size > 0 and (tmp_path / "ok.pdf").stat().st_size > 0


def test_a_clipped_title_is_refused(tmp_path: Path) -> None:
    fig, ax = panel()
    ax.legend()
    fig.suptitle(LONG_CAPTION)  # one line, wider than the 4.2-inch canvas
    with pytest.raises(FigureLayoutError, match="figure clipped: the title falls outside"):
        save_figure(fig, tmp_path, "clipped")
    assert not (tmp_path / "clipped.png").exists()


def test_a_legend_outside_the_canvas_is_refused(tmp_path: Path) -> None:
    fig, ax = panel(layout=None)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))  # right of the panel, off the canvas
    with pytest.raises(FigureLayoutError, match="the legend of panel 1 falls outside"):
        save_figure(fig, tmp_path, "legend")


def test_a_reference_line_without_a_legend_entry_is_refused(tmp_path: Path) -> None:
    fig, ax = panel()
    ax.axhline(2.5, color="k")  # explained only by a title line, if at all
    ax.legend()
    with pytest.raises(FigureLayoutError, match="a reference line of panel 1 .* is in no legend"):
        save_figure(fig, tmp_path, "line")
