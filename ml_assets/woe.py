"""Weight of evidence (WoE) and information value (IV) of a feature against the default label,
over bins chosen by optbinning's OptimalBinning (Navas-Palencia 2020, "Optimal binning:
mathematical programming formulation"): pre-bins at quantiles, merged by a constraint
programming solver into at most `max_n_bins` bins of at least `min_bin_size` of the loans, each
bin's event rate differing from its neighbours'; missing values form their own bin.

Per bin i, with e_i defaults and g_i non-defaults of the E defaults and G non-defaults in all:
WoE_i = ln((g_i / G) / (e_i / E)) (positive: fewer defaults than average; 0 for a bin without
defaults or without non-defaults, as optbinning sets it); IV_i = (g_i / G - e_i / E) x WoE_i;
IV = sum of IV_i (Siddiqi, "Credit Risk Scorecards", 2006, chapter 6).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

IV_BANDS = ("unpredictive", "weak", "medium", "strong", "suspicious")


def iv_band(iv: float, bounds: tuple[float, float, float, float]) -> str:
    """Siddiqi's reading of an IV: below bounds[0] unpredictive, then weak, medium, strong,
    and from bounds[3] suspicious (too good to be true: a leak of the label?)."""
    return IV_BANDS[sum(iv >= bound for bound in bounds)]


def woe_bins(values: pd.Series, labels: np.ndarray, categorical: bool, max_n_bins: int,
             min_bin_size: float) -> list[dict]:
    """The bins of one feature (`values`, shape (n,); numbers, booleans or categories, None or
    NaN missing) against 0/1 `labels` (n,): per bin its index from 0, `bin` (a readable
    label), `lower`, `upper` (numeric: the bin is [lower, upper), None for an infinite side or
    the missing bin), `categories` (categorical), `loans`, `defaults`, `default_rate`, `woe`,
    `iv_contribution`; the missing bin when any value is missing. An empty optbinning
    `Special` bin is left out."""
    from optbinning import OptimalBinning

    if categorical:
        x = values.astype(object).where(values.notna(), None).to_numpy()
    else:
        x = pd.to_numeric(values.astype(object).where(values.notna(), None),
                          errors="coerce").to_numpy(dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if pd.isna(pd.Series(x)).all():  # nothing to bin (optbinning refuses): one missing bin
        woe, iv = woe_of_counts(np.array([y.sum()]), np.array([len(y)]))
        return [_bin(0, "missing", None, None, None, pd.Series(
            {"Count": len(y), "Event": y.sum(), "WoE": woe[0], "IV": iv[0]}))]
    binning = OptimalBinning(name=str(values.name), dtype="categorical" if categorical
                             else "numerical", max_n_bins=max_n_bins, min_bin_size=min_bin_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optbinning warns of a constant or all-missing feature
        binning.fit(x, y)
    table = binning.binning_table.build(show_digits=6)
    # optbinning's table: one row per bin, then Special (no special codes here: empty),
    # Missing and Totals
    splits, bins, missing = list(binning.splits), table.iloc[:-3], table.iloc[-2]
    rows = []
    for index, (_, row) in enumerate(bins.iterrows()):
        categories = [str(c) for c in row["Bin"]] if categorical else None
        lower = None if categorical or index == 0 else float(splits[index - 1])
        upper = None if categorical or index == len(splits) else float(splits[index])
        rows.append(_bin(len(rows), _label(lower, upper, categories), lower, upper,
                         categories, row))
    if missing["Count"]:
        rows.append(_bin(len(rows), "missing", None, None, None, missing))
    return rows


def _bin(index: int, label: str, lower: float | None, upper: float | None,
         categories: list[str] | None, row: pd.Series) -> dict:
    loans, defaults = int(row["Count"]), int(row["Event"])
    return {"bin_index": index, "bin": label, "lower": lower, "upper": upper,
            "categories": categories, "loans": loans, "defaults": defaults,
            "default_rate": defaults / loans if loans else None,
            "woe": float(row["WoE"]), "iv_contribution": float(row["IV"])}


def _label(lower: float | None, upper: float | None, categories: list[str] | None) -> str:
    if categories is not None:
        return ", ".join(categories)
    low = "-inf" if lower is None else f"{lower:.6g}"
    high = "inf" if upper is None else f"{upper:.6g}"
    return f"[{low}, {high})"


def woe_of_counts(defaults: np.ndarray, loans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """WoE and IV contribution per bin from its defaults and loans (module docstring)."""
    events, non_events = np.asarray(defaults, float), np.asarray(loans, float) - defaults
    share_events, share_non = events / events.sum(), non_events / non_events.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        woe = np.where((events > 0) & (non_events > 0), np.log(share_non / share_events), 0.0)
    return woe, (share_non - share_events) * woe


