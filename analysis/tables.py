"""The paper's summary statistics from the per-path table: pure pandas, no files, no cluster.

    from analysis import tables
    rho = tables.spearman_table(table)          # paper Table 1
    pairs = tables.paired_differences(table)    # one row per matched path and measure
    frac = tables.paired_table(pairs)           # paper Table 2
    med = tables.noise_medians(table)           # paper Fig. 5

Every statistic is computed per network (one run at one checkpoint on one path set), then
summarised over seeds as ``<name>_mean`` and ``<name>_std``: the sample standard deviation
(``ddof=1``), so a group with one seed has ``std = NaN``, written ``nan`` in CSV and ``–`` in
Markdown. ``n_seeds`` counts the distinct seeds of a group, ``n_paths`` the fewest paths any of
its networks has (fewer than the path set when a store is incomplete and was reported).

Settings are the training recipes (``vanilla``, ``augment``, ``noisy``, ``double_descent``).
Paired comparisons match networks by seed (and by run for trained vs initialisation) and
paths by ``path_id`` within one path set; a path *increases* when the treatment's value is
strictly larger than the reference's (ties count as not increasing).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from .config import AnalysisConfig, AnalysisError

__all__ = ["GROUP", "PAIRED_MEASURES", "spearman", "summarize", "spearman_table", "paired_differences",
           "paired_table", "noise_medians", "clean_reference", "format_csv", "display_cells", "format_markdown",
           "mean_std"]

log = logging.getLogger("analysis.tables")

# what makes results comparable at all: the same data, architecture and path set
GROUP = ["dataset", "model", "width", "paths", "path_set"]
# effective_density (docs/design.md, "Kinks along a path"): regions weighted by their slope jumps,
# the paper's open question; NaN where a store kept no affine maps, and then left out of fractions
PAIRED_MEASURES = ["density", "density_per_length", "deviation", "total_variation", "effective_density"]
# cos_median: local similarity, the median cosine between the slopes adjacent regions have along a
# path (docs/design.md): the paper's claim that regions grow locally similar past interpolation
MEDIAN_MEASURES = ["density", "density_per_length", "deviation", "effective_density", "cos_median"]
VANILLA, AUGMENT, NOISY = "vanilla", "augment", "noisy"


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties, then Pearson's r on the ranks).

    NaN with fewer than two pairs or when either variable is constant (no ranking to compare).
    """
    x, y = pd.Series(np.asarray(x, dtype=float)), pd.Series(np.asarray(y, dtype=float))
    ok = x.notna() & y.notna()
    rx, ry = x[ok].rank().to_numpy(), y[ok].rank().to_numpy()
    if rx.size < 2:
        return math.nan
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else math.nan


def summarize(per_network: pd.DataFrame, keys: list, values: list) -> pd.DataFrame:
    """Mean and sample std (``ddof=1``) of ``values`` over the networks of each ``keys`` group,
    with ``n_seeds`` and ``n_paths`` (the minimum of a ``n_paths`` column), sorted by ``keys``.

    NaN values (an undefined statistic of one network) are left out of the mean and std.
    """
    if per_network.empty:
        cols = keys + ["n_seeds", "n_paths"] + [f"{v}_{s}" for v in values for s in ("mean", "std")]
        return pd.DataFrame(columns=cols)
    g = per_network.groupby(keys, dropna=False, sort=True)
    out = g.agg(n_seeds=("seed", "nunique"), n_networks=("seed", "size"), n_paths=("n_paths", "min"))
    crowded = out[out.n_networks > out.n_seeds]
    if len(crowded):
        log.warning("%d group(s) hold several networks with the same seed (runs differing in something "
                    "not in %s): each network counts once in the mean", len(crowded), keys)
    out = out.drop(columns="n_networks")
    for v in values:
        out[f"{v}_mean"] = g[v].mean()
        out[f"{v}_std"] = g[v].std(ddof=1)
    return out.reset_index()


def spearman_table(table: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1: Spearman correlation between density and absolute deviation across the
    paths of each network, mean ± std over seeds, per dataset, architecture, path set,
    setting, noise level and checkpoint.

    Columns: ``GROUP``, ``setting``, ``noise``, ``checkpoint``, ``n_seeds``, ``n_paths``,
    ``rho_density_{mean,std}`` (regions per path vs deviation) and
    ``rho_density_per_length_{mean,std}`` (regions per unit length vs deviation).
    """
    keys = GROUP + ["setting", "noise", "checkpoint"]
    rows = []
    for k, net in table.groupby(keys + ["seed", "run_id"], dropna=False, sort=True):
        rows.append({**dict(zip(keys + ["seed", "run_id"], k)), "n_paths": len(net),
                     "rho_density": spearman(net["density"], net["deviation"]),
                     "rho_density_per_length": spearman(net["density_per_length"], net["deviation"])})
    return summarize(pd.DataFrame(rows), keys, ["rho_density", "rho_density_per_length"])


def clean_reference(trained: pd.DataFrame, order=(NOISY, VANILLA)) -> pd.DataFrame:
    """The clean (``noise == 0``) rows each noise level is compared with: per ``GROUP``, the
    rows of the first setting in ``order`` that has any."""
    clean = trained[(trained["noise"] == 0) & trained["setting"].isin(order)]
    if clean.empty:
        return clean
    rank = clean["setting"].map({s: i for i, s in enumerate(order)})
    best = rank.groupby([clean[c] for c in GROUP], dropna=False).transform("min")
    return clean[rank == best]


def present(measures, table: pd.DataFrame) -> list:
    """The ``measures`` ``table`` has (a table aggregated before a measure existed lacks it)."""
    return [m for m in measures if m in table.columns]


def _pairs(after: pd.DataFrame, before: pd.DataFrame, on: list, comparison: str, reference) -> pd.DataFrame:
    labels = GROUP + ["setting", "noise", "seed", "path_id"]
    try:
        if after.duplicated(list(dict.fromkeys(on + ["noise"]))).any():
            raise pd.errors.MergeError("duplicate treatment rows")
        m = after.merge(before, on=on, suffixes=("", "_ref"), validate="many_to_one")
    except pd.errors.MergeError as err:
        raise AnalysisError(f"{comparison}: several networks match one path on {on} (runs differing in "
                            "something these tables do not distinguish, e.g. the learning rate); aggregate "
                            "such sweeps separately") from err
    if m.empty:
        return pd.DataFrame()
    out = []
    ref = m["setting_ref"] if reference is None else reference
    for measure in present(PAIRED_MEASURES, m):
        b, a = m[f"{measure}_ref"].astype(float), m[measure].astype(float)
        out.append(m[labels].assign(comparison=comparison, reference=ref, measure=measure, before=b.to_numpy(),
                                    after=a.to_numpy(), difference=(a - b).to_numpy()))
    return pd.concat(out, ignore_index=True)


def paired_differences(table: pd.DataFrame, config: AnalysisConfig = AnalysisConfig()) -> pd.DataFrame:
    """Matched paths of the paper's comparisons, one row per path and measure.

    Comparisons (``after`` vs ``before``):

    - ``augment vs vanilla``: trained networks of the same seed, data, architecture and
      noise level;
    - ``noise vs clean``: each ``noisy`` network with ``noise > 0`` vs the clean network of the
      same seed (:func:`clean_reference`; the ``reference`` column names its setting);
    - ``trained vs init``: each run's trained checkpoint vs its initialisation.

    Returns
    -------
    pandas.DataFrame
        ``comparison``, ``reference``, ``GROUP``, ``setting``, ``noise`` (of the treatment),
        ``seed``, ``path_id``, ``measure``, ``before``, ``after``, ``difference``, sorted.
    """
    cols = ["comparison", "reference"] + GROUP + ["setting", "noise", "seed", "path_id", "measure", "before",
                                                  "after", "difference"]
    trained = table[table["checkpoint"] == config.trained]
    init = table[table["checkpoint"] == config.init]
    parts = [
        _pairs(trained[trained["setting"] == AUGMENT], trained[trained["setting"] == VANILLA],
               GROUP + ["noise", "seed", "path_id"], "augment vs vanilla", VANILLA),
        _pairs(trained[(trained["setting"] == NOISY) & (trained["noise"] > 0)],
               clean_reference(trained, config.noise_reference).drop(columns="noise"),
               GROUP + ["seed", "path_id"], "noise vs clean", None),
        _pairs(trained, init.drop(columns=[c for c in GROUP if c != "path_set"] + ["setting", "noise", "seed"]),
               ["run_id", "path_set", "path_id"], "trained vs init", config.init),
    ]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)[cols]
    order = {m: i for i, m in enumerate(PAIRED_MEASURES)}
    out = out.assign(_m=out["measure"].map(order))
    keys = ["comparison", "reference"] + GROUP + ["setting", "noise", "seed", "_m", "path_id"]
    return out.sort_values(keys, kind="mergesort").drop(columns="_m").reset_index(drop=True)


def paired_table(pairs: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 2: the fraction of matched paths on which each measure increases, per
    network pair, then mean ± std over seeds.

    Columns: ``comparison``, ``reference``, ``GROUP``, ``setting``, ``noise``, ``n_seeds``,
    ``n_paths``, and ``frac_<measure>_{mean,std}`` for density, density per length, deviation,
    total variation and effective density (a fraction over the pairs where the measure is defined).
    """
    keys = ["comparison", "reference"] + GROUP + ["setting", "noise"]
    values = [f"frac_{m}" for m in PAIRED_MEASURES if pairs.empty or m in set(pairs["measure"])]
    if pairs.empty:
        return summarize(pd.DataFrame(columns=keys + ["seed", "n_paths"] + values), keys, values)
    # a pair whose measure is undefined (NaN: no affine maps) is no evidence either way
    up = pairs.assign(up=(pairs["difference"] > 0).astype(float).where(pairs["difference"].notna()))
    per = up.groupby(keys + ["seed", "measure"], dropna=False, sort=True).agg(frac=("up", "mean"),
                                                                               n_paths=("up", "size"))
    wide = per["frac"].unstack("measure").rename(columns=lambda m: f"frac_{m}")
    wide["n_paths"] = per["n_paths"].groupby(level=list(range(len(keys) + 1))).min()
    return summarize(wide.reset_index(), keys, values)


def noise_medians(table: pd.DataFrame, config: AnalysisConfig = AnalysisConfig()) -> pd.DataFrame:
    """Paper Fig. 5: median density and median deviation over the paths of each network, per
    noise level, mean ± std over seeds. Noise 0 is the clean reference (:func:`clean_reference`);
    only data/architecture/path-set groups with ``noisy`` networks appear.

    Columns: ``GROUP``, ``noise``, ``setting``, ``n_seeds``, ``n_paths``, and
    ``median_<measure>_{mean,std}`` for density, density per length, deviation, effective density and
    the local similarity ``cos_median``.
    """
    keys = GROUP + ["noise", "setting"]
    measures = present(MEDIAN_MEASURES, table)
    values = [f"median_{m}" for m in measures]
    trained = table[table["checkpoint"] == config.trained]
    noisy = trained[(trained["setting"] == NOISY) & (trained["noise"] > 0)]
    clean = clean_reference(trained, config.noise_reference)
    rows = pd.concat([clean, noisy], ignore_index=True)
    rows = rows[rows.set_index(GROUP).index.isin(noisy.set_index(GROUP).index)]
    if rows.empty:
        return summarize(pd.DataFrame(columns=keys + ["seed", "n_paths"] + values), keys, values)
    per = rows.groupby(keys + ["seed", "run_id"], dropna=False, sort=True).agg(
        n_paths=("path_id", "size"), **{f"median_{m}": (m, "median") for m in measures})
    return summarize(per.reset_index(), keys, values)


# ---- fixed formatting, so tables are byte-for-byte reproducible --------------------------------

def _cell(v, fmt: str = "g") -> str:
    if v is None:
        return "nan"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else format(float(v), fmt)
    return str(v)


def format_csv(df: pd.DataFrame, float_format: str = ".6g") -> str:
    """CSV text with every float written as ``format(x, float_format)`` and NaN as ``nan``."""
    lines = [",".join(map(str, df.columns))]
    for row in df.itertuples(index=False):
        cells = []
        for v in row:
            s = _cell(v, float_format)
            cells.append(f'"{s}"' if ("," in s or '"' in s) else s)
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def mean_std(mean, std, fmt: str) -> str:
    """``"0.512 ± 0.031"``; an undefined std (one seed) or mean is shown as ``–``."""
    def one(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(float(v), fmt)

    return "–" if one(mean) == "–" else f"{one(mean)} ± {one(std)}"


def display_cells(df: pd.DataFrame, fmt: str = ".3f") -> tuple[list, list, list]:
    """The table as text, for Markdown and HTML alike: every ``<x>_mean`` / ``<x>_std`` pair
    becomes one ``<x>`` column written ``mean ± std`` (``fmt``), other columns as they are
    (numbers with ``g``). Returns ``(columns, rows of cells, is-numeric per column)``."""
    cols, out_cols = list(df.columns), []
    for c in cols:
        if c.endswith("_std") and c[:-4] + "_mean" in cols:
            continue
        out_cols.append(c[:-5] if c.endswith("_mean") and c[:-5] + "_std" in cols else c)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in out_cols:
            if c + "_mean" in cols:
                cells.append(mean_std(r[c + "_mean"], r[c + "_std"], fmt))
            else:
                v = r[c]
                cells.append("–" if isinstance(v, float) and math.isnan(v) else _cell(v, "g"))
        rows.append(cells)
    numeric = [c + "_mean" in cols or pd.api.types.is_numeric_dtype(df[c]) for c in out_cols]
    return out_cols, rows, numeric


def format_markdown(df: pd.DataFrame, fmt: str = ".3f", title: str | None = None, notes=()) -> str:
    """A Markdown table of :func:`display_cells`, with a title and notes under it."""
    out_cols, rows, numeric = display_cells(df, fmt)
    text = [] if title is None else [f"### {title}", ""]
    text.append("| " + " | ".join(out_cols) + " |")
    text.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    text += ["| " + " | ".join(cells) + " |" for cells in rows]
    if not rows:
        notes = ["no rows: the sweep has no networks for this table", *notes]
    notes = ["mean ± std over seeds (sample std); – : undefined (a single seed, or a constant measure)",
             *notes]
    text += [""] + [f"*{n}*" if i == 0 else n for i, n in enumerate(notes)]
    return "\n".join(text) + "\n"
