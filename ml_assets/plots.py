"""Charts for the Dagster UI, as Markdown images (PNG data URIs) in materialisation metadata.

Drawn on a bare Agg canvas with a fixed layout: no pyplot state, no tight-bbox second pass,
a few tens of milliseconds a chart (a chart is drawn for every model and month).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence


def _figure(width: float, height: float, left: float = 0.12):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(figure)
    return figure, figure.add_axes((left, 0.14, 0.96 - left, 0.76))


def _markdown_image(figure, title: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{title}](data:image/png;base64,{encoded})"


def bar_chart(values: Mapping[str, float], title: str, xlabel: str) -> str:
    """Horizontal bars, the first value on top."""
    names = list(values)[::-1]
    figure, axes = _figure(6.5, 0.28 * len(names) + 1.2, left=0.34)
    axes.barh(names, [values[n] for n in names], color="#4f6d7a")
    axes.tick_params(labelsize=8)
    axes.set_xlabel(xlabel, fontsize=8)
    axes.set_title(title, fontsize=9)
    return _markdown_image(figure, title)


def line_chart(months: Sequence, series: Mapping[str, Sequence[float | None]], title: str,
               ylabel: str, bands: Mapping[str, float] | None = None) -> str:
    """One line per series over months, with optional horizontal threshold lines."""
    figure, axes = _figure(7.5, 3.4)
    for name, values in series.items():
        axes.plot(months, [float("nan") if v is None else v for v in values], marker="o",
                  markersize=3, label=name)
    for label, level in (bands or {}).items():
        axes.axhline(level, linestyle="--", linewidth=1, color="#b33", alpha=0.6)
        axes.annotate(label, (0, level), xycoords=("axes fraction", "data"), fontsize=7,
                      color="#b33", textcoords="offset points", xytext=(0, 2))
    axes.set_title(title, fontsize=9)
    axes.set_ylabel(ylabel, fontsize=8)
    axes.tick_params(labelsize=7)
    for tick in axes.get_xticklabels():
        tick.set_rotation(30)
    if len(series) > 1:
        axes.legend(fontsize=7, ncol=2)
    return _markdown_image(figure, title)


def calibration_chart(grades: Sequence[str], predicted: Sequence[float | None],
                      observed: Sequence[float | None], loans: Sequence[int], title: str) -> str:
    """Predicted PD against the observed default rate per grade (points sized by loans, named
    by grade), with the diagonal of perfect calibration."""
    figure, axes = _figure(5.5, 4.2, left=0.14)
    shown = [(g, p, o, n) for g, p, o, n in zip(grades, predicted, observed, loans, strict=True)
             if n and p is not None and o is not None]
    top = max([0.05, *(max(p, o) for _, p, o, _ in shown)]) * 1.1
    axes.plot([0, top], [0, top], linestyle="--", linewidth=1, color="#888")
    if shown:
        most = max(n for *_, n in shown)
        axes.scatter([p for _, p, _, _ in shown], [o for _, _, o, _ in shown],
                     s=[20 + 180 * n / most for *_, n in shown], color="#4f6d7a", alpha=0.8)
        for grade, p, o, n in shown:
            axes.annotate(f"{grade} ({n})", (p, o), fontsize=7, textcoords="offset points",
                          xytext=(4, 4))
    axes.set_xlim(0, top)
    axes.set_ylim(0, top)
    axes.set_xlabel("predicted PD (mean score)", fontsize=8)
    axes.set_ylabel("observed default rate", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.set_title(title, fontsize=9)
    return _markdown_image(figure, title)


def tradeoff_chart(approval: Sequence[float], bad_rate: Sequence[float | None],
                   chosen: tuple[float, float | None] | None, title: str) -> str:
    """Expected bad rate against approval rate, one point per cut-off, the chosen cut-off
    marked."""
    figure, axes = _figure(6.0, 3.6, left=0.13)
    axes.plot(approval, [float("nan") if b is None else b for b in bad_rate], marker="o",
              markersize=3, color="#4f6d7a")
    if chosen and chosen[1] is not None:
        axes.scatter([chosen[0]], [chosen[1]], s=60, color="#b33", zorder=3)
        axes.annotate("cut-off used", chosen, fontsize=7, color="#b33",
                      textcoords="offset points", xytext=(5, -10))
    axes.set_xlim(0, 1.02)
    axes.set_xlabel("approval rate", fontsize=8)
    axes.set_ylabel("expected bad rate of the approved", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.set_title(title, fontsize=9)
    return _markdown_image(figure, title)


def data_uri(image: str) -> str:
    """The PNG data URI inside a chart of this module (a Markdown image `![title](uri)`), for
    an HTML page that embeds it (`<img src="...">`: no file or server needed)."""
    return image[image.index("](") + 2:-1]
