"""Charts for the Dagster UI, as Markdown images (PNG data URIs) in materialisation metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence


def _markdown_image(figure, title: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    return f"![{title}](data:image/png;base64,{encoded})"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(values: Mapping[str, float], title: str, xlabel: str) -> str:
    """Horizontal bars, largest on top."""
    plt = _pyplot()
    names = list(values)[::-1]
    figure, axes = plt.subplots(figsize=(6, 0.3 * len(names) + 1))
    axes.barh(names, [values[n] for n in names], color="#4f6d7a")
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    try:
        return _markdown_image(figure, title)
    finally:
        plt.close(figure)


def line_chart(months: Sequence, series: Mapping[str, Sequence[float | None]], title: str,
               ylabel: str, bands: Mapping[str, float] | None = None) -> str:
    """One line per series over months, with optional horizontal threshold lines."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 3.2))
    for name, values in series.items():
        axes.plot(months, [float("nan") if v is None else v for v in values], marker="o",
                  markersize=3, label=name)
    for label, level in (bands or {}).items():
        axes.axhline(level, linestyle="--", linewidth=1, color="#b33", alpha=0.6)
        axes.annotate(label, (months[0], level), fontsize=7, color="#b33",
                      textcoords="offset points", xytext=(0, 2))
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    if len(series) > 1:
        axes.legend(fontsize=7, ncol=2)
    figure.autofmt_xdate()
    try:
        return _markdown_image(figure, title)
    finally:
        plt.close(figure)
