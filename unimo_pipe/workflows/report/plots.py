"""Plots as inline SVG, drawn by matplotlib (Agg, no display, text kept as text so the SVG stays small)."""

from __future__ import annotations

import io
import re
from collections.abc import Sequence

import numpy as np

MAX_POINTS = 2000  # a line of more steps is thinned to this many points (evenly, last one kept)


def _figure(title: str, *, width: float = 4.6):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "unimo-pipe-report", "font.size": 9})
    figure, axes = plt.subplots(figsize=(width, 2.7))
    # fixed margins: constrained layout would cost about half the drawing time of these small plots
    figure.subplots_adjust(left=0.82 / width, right=1 - (1.7 if width > 5 else 0.15) / width, bottom=0.17, top=0.89)
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    return figure, axes


def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    return re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)


def histogram(values: Sequence[float] | np.ndarray, *, title: str, xlabel: str, bins: int = 30,
              integer: bool = False) -> str:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    figure, axes = _figure(f"{title} (n={len(values):,})")
    if integer and len(values):
        low, high = int(values.min()), int(values.max())
        step = max(1, (high - low + 1) // bins)
        bins_or_edges = np.arange(low, high + step + 1, step) - 0.5
    else:
        bins_or_edges = bins
    axes.hist(values, bins=bins_or_edges, color="#3f72c4", edgecolor="white", linewidth=0.5)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    return _svg(figure)


def lines(steps: dict[str, tuple[list[float], list[float]]], *, title: str, ylabel: str, log: bool = False) -> str:
    """One line per name: {name: (steps, values)}."""
    figure, axes = _figure(title, width=6.2 if len(steps) > 1 else 4.6)
    for name, (xs, ys) in sorted(steps.items()):
        xs, ys = _thinned(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
        axes.plot(xs, ys, label=name, linewidth=1.3, marker="o" if len(xs) <= 30 else None, markersize=2.5)
    if log and all(min(ys) > 0 for _, ys in steps.values() if ys):
        axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel(ylabel)
    if len(steps) > 1:
        axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(figure)


def _thinned(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(xs) <= MAX_POINTS:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, MAX_POINTS).astype(int))
    return xs[keep], ys[keep]


def figure_html(svg: str, caption: str = "") -> str:
    from unimo_pipe.workflows.report.page import escape

    return f"<figure>{svg}<figcaption>{escape(caption)}</figcaption></figure>" if caption else f"<figure>{svg}</figure>"
