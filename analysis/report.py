"""The report of a sweep: findings in plain words, tables and figures, as HTML and Markdown.

    from analysis.report import write_report
    files = write_report("sweeps/demo/analysis", "sweeps/demo/report", title="demo")

It reads what :func:`analysis.aggregation.aggregate` wrote (``paths.parquet``, ``planes.parquet``
when discovery wrote planes, and ``figures/``),
recomputes the tables from the per-path table (so the report and the tables agree by
construction) and writes into ``out_dir``::

    index.html      findings, tables and figures in one page (figures are files beside it)
    report.md       the same findings and tables in Markdown
    findings.json   every number the sentences quote, unrounded
    figures/*.png   copies of the aggregation's PNG figures

Every sentence comes from :func:`analysis.findings.findings`; nothing is written by hand.
"""

from __future__ import annotations

import html
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from . import tables
from pipeline.config import write_atomic

from .config import AnalysisConfig, AnalysisError
from .findings import Finding, findings
from .planes import plane_findings, plane_vs_line
from .status import stale_reason
from .aggregation import TABLES

__all__ = ["write_report", "networks_table", "report_tables"]

# figure file prefix -> section caption, in the order they appear
FIGURES = {
    "ecdf": "ECDFs over paths of density and deviation, per setting (paper Fig. 3-4)",
    "noise": "Median measures against label noise (paper Fig. 5)",
    "paired": "Paired differences path by path (what Table 2 counts)",
    "test-loss": "Measures against test loss, one point per network",
    "double-descent": "Model-wise double descent",
    "density2d": "2-D against 1-D density: regions per plane and per path through the same training images, one point per network",
    "path": "Single paths: the network's logits along the loop, its breakpoints in the strip below (a rug, or their density per unit length when there are more than 300)",
    "plane": "Planes: every linear region of a trained network on the plane through three training images",
}
PLANES = ("Each polygon is one linear region of the network on the plane x0 + u (x1 - x0) + v (x2 - x0) "
          "(pipeline/engine/planes/, exact), filled by the class the network predicts on it (or one logit's value, "
          "plane_color: logit); the corner insets are the domain's corners x0, x1, x2. Analysis config: planes "
          "(figures per architecture, 0 for none), plane_scale, plane_seed, plane_color.")
DATA = ("The numbers behind this report: the per-path table ../analysis/paths.parquet (one row per network "
        "and path), the tables ../analysis/tables/*.csv, every region in ../runs/*/regions/*.zarr. The notebook "
        "analysis/explore.ipynb of the code's checkout shows how to read them.")
INTRO = (
    "A ReLU network is piecewise affine. Along each closed path (a training image translated along a "
    "circle) every linear region the path crosses was found exactly, with its affine map. "
    "<b>Density</b> counts the regions a path crosses; <b>absolute deviation</b> integrates how far the "
    "network's output strays from the straight line between each segment's end values. The paper's claim "
    "is that the second, not the first, tracks how nonlinear a network really is.")


def networks_table(table: pd.DataFrame, config: AnalysisConfig = AnalysisConfig()) -> pd.DataFrame:
    """One row per architecture, setting and noise level: seeds, epochs, train and test error
    of the trained networks (mean and std over seeds)."""
    keys = tables.GROUP + ["setting", "noise"]
    trained = table[table["checkpoint"] == config.trained]
    per = trained.groupby(keys + ["seed", "run_id"], dropna=False, sort=True).agg(
        n_paths=("path_id", "size"), epochs=("epochs", "first"), train_error=("train_error", "first"),
        test_error=("test_error", "first"))
    return tables.summarize(per.reset_index(), keys, ["epochs", "train_error", "test_error"])


def report_tables(table: pd.DataFrame, config: AnalysisConfig = AnalysisConfig(), planes=None) -> dict:
    """The report's tables, computed from the per-path table (and the per-plane table, if
    given and not empty): name -> (title, format, frame)."""
    pairs = tables.paired_differences(table, config)
    out = {"networks": ("Trained networks (mean ± std over seeds)", ".3g", networks_table(table, config))}
    frames = [("spearman", tables.spearman_table(table)), ("paired", tables.paired_table(pairs)),
              ("noise_medians", tables.noise_medians(table, config))]
    if planes is not None and len(planes):
        frames.append(("plane_vs_line", plane_vs_line(table, planes)))
    for name, frame in frames:
        title, fmt = TABLES[name]
        out[name] = (title, fmt, frame)
    return out


def _constant_columns(frames) -> dict:
    """Label columns with one value in every table (shown once, above the tables)."""
    const = {}
    for c in tables.GROUP:
        values = set()
        for df in frames:
            if c in df.columns and len(df):
                values |= set(map(str, df[c].unique()))
        if len(values) == 1:
            const[c] = values.pop()
    return const


def _summary(table: pd.DataFrame, config: AnalysisConfig) -> dict:
    nets = table.groupby(["run_id", "checkpoint"]).ngroups
    return {"networks": int(table["run_id"].nunique()), "checkpoints": sorted(table["checkpoint"].unique()),
            "stores": int(nets), "paths": int(table["path_id"].nunique()),
            "segments": int(table["n_segments"].sum()), "regions": int(table["density"].sum()),
            "models": sorted(table["model"].unique()), "settings": sorted(table["setting"].unique()),
            "seeds": sorted(int(s) for s in table["seed"].unique())}


def _figures(analysis_dir: Path) -> list[tuple[str, list[Path]]]:
    files = sorted((analysis_dir / "figures").glob("*.png"))
    sections = []
    for prefix, caption in FIGURES.items():
        mine = [f for f in files if f.name.startswith(prefix + "-")]  # figures.draw_all names them <kind>-...
        if mine or (prefix == "plane" and _planes(analysis_dir)["notes"]):
            sections.append((caption, mine))
    return sections


def _planes(analysis_dir: Path) -> dict:
    """The plane figures' captions (file name -> text) and notes, from figures/planes.json."""
    from .figures import PLANES_JSON

    f = analysis_dir / "figures" / PLANES_JSON
    if not f.is_file():
        return {"captions": {}, "notes": []}
    meta = json.loads(f.read_text())
    return {"captions": {p["file"]: p["caption"] for p in meta.get("planes", [])}, "notes": meta.get("notes", [])}


def _left_out(analysis_dir: Path) -> list[str]:
    """The note naming every store the aggregation left out or counted in part, with why (from
    ``stores.csv``, :func:`analysis.aggregation.left_out`); the networks whose failing
    certificates left paths out have their own note (:func:`_uncertified`)."""
    from .aggregation import left_out

    stores_csv = analysis_dir / "stores.csv"
    why = left_out(pd.read_csv(stores_csv), certificates=False) if stores_csv.is_file() else {}
    if not why:
        return []
    return ["Stores not wholly in this report: " + "; ".join(f"{k}: {v}" for k, v in sorted(why.items()))]


def _uncertified(analysis_dir: Path) -> list[str]:
    """The note naming the networks whose failing certificates left paths out (stores.csv)."""
    from .collect import uncertified_note

    f = analysis_dir / "stores.csv"
    note = uncertified_note(pd.read_csv(f)) if f.exists() else None
    return [note] if note else []


def _read_table(path: Path) -> pd.DataFrame:
    """A table of the aggregation, or :class:`AnalysisError` if it cannot be read (truncated by a
    full disk, damaged): the aggregation writes it again from the stores."""
    import pyarrow

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise AnalysisError(f"{path} is unreadable ({type(err).__name__}: {err}): run `python -m jobs aggregate` on "
                            "the sweep again to rewrite it from the stores") from err


def write_report(analysis_dir, out_dir, title: str = "sweep", config: AnalysisConfig = AnalysisConfig(),
                 notes=(), sweep_root=None, allow_stale: bool = False) -> dict:
    """Write ``index.html``, ``report.md``, ``findings.json`` and ``figures/`` into ``out_dir``
    from an aggregation folder; returns the paths written.

    The aggregation must be the sweep's current one (:func:`analysis.status.stale_reason`: its
    last run succeeded and no store of ``sweep_root``, default the root it recorded, changed
    since). With ``allow_stale`` another is reported, and the page says so, and why, at its top.
    Every store the aggregation left out (or counted in part) is named with the reason.

    Raises :class:`AnalysisError` if ``analysis_dir`` holds no aggregation, or (unless
    ``allow_stale``) one that failed or is older than the stores: the message says which and what
    to run.
    """
    analysis_dir, out = Path(analysis_dir), Path(out_dir)
    parquet = analysis_dir / "paths.parquet"
    if not parquet.exists():
        raise AnalysisError(f"{analysis_dir} holds no aggregation (no paths.parquet): run "
                            f"`python -m jobs aggregate` on the sweep first")
    stale = stale_reason(analysis_dir, sweep_root)
    if stale and not allow_stale:
        raise AnalysisError(f"{analysis_dir} is not the sweep's current aggregation: {stale}. Nothing was written: "
                            "run `python -m jobs aggregate <sweep>` (and fix what it reports) first, or pass "
                            "--allow-stale (allow_stale=True in Python) to report it anyway, marked stale at the top")
    table = _read_table(parquet)
    if table.empty:
        raise AnalysisError(f"{parquet} has no rows: nothing to report")
    planes_file = analysis_dir / "planes.parquet"
    planes = _read_table(planes_file) if planes_file.exists() else None
    frames = report_tables(table, config, planes)
    found = findings(table, config)
    if "plane_vs_line" in frames:
        found += plane_findings(frames["plane_vs_line"][2])
    const = _constant_columns([f for _, _, f in frames.values()])
    shown = {name: (t, fmt, df.drop(columns=[c for c in const if c in df.columns])) for name, (t, fmt, df) in
             frames.items()}
    figs = _figures(analysis_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    for _, files in figs:
        for f in files:
            shutil.copyfile(f, out / "figures" / f.name)
    meta = {"title": title, "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "summary": _summary(table, config), "constant": const,
            "notes": list(notes) + _left_out(analysis_dir) + _uncertified(analysis_dir), "planes": _planes(analysis_dir),
            "stale": (f"STALE: this report is built from an aggregation that is not the sweep's current one ({stale}); "
                      "its numbers may not be the stores' (reported with --allow-stale; run `python -m jobs "
                      "aggregate` for a current one).") if stale else None}
    written = {"html": out / "index.html", "markdown": out / "report.md", "findings": out / "findings.json"}
    write_atomic(written["html"], _html(meta, found, shown, figs))
    write_atomic(written["markdown"], _markdown(meta, found, shown, figs))
    write_atomic(written["findings"], json.dumps({"meta": meta, "findings": [f.__dict__ for f in found]}, indent=1,
                                           default=_json_default))
    return written


def _json_default(v):
    import numpy as np

    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _by_group(found: list[Finding]) -> dict:
    out = {}
    for f in found:
        out.setdefault(f.group, []).append(f)
    return out


def _overview(meta) -> str:
    s = meta["summary"]
    return (f"{s['networks']} trained networks ({', '.join(s['models'])}; settings {', '.join(s['settings'])}; "
            f"seeds {', '.join(map(str, s['seeds']))}), each analysed at checkpoints {', '.join(s['checkpoints'])} "
            f"({s['stores']} in all) on the same {s['paths']} closed paths: {s['segments']:,} segments, "
            f"{s['regions']:,} linear regions found.")


def _markdown(meta, found, shown, figs) -> str:
    lines = [f"# Linear regions report: {meta['title']}", ""]
    lines += [f"> **{meta['stale']}**", ""] if meta.get("stale") else []
    lines += [f"*Generated {meta['generated']}.*", "",
             html.unescape(INTRO.replace("<b>", "**").replace("</b>", "**")), "", _overview(meta), ""]
    lines += [f"*{n}*" for n in meta["notes"]] + ([""] if meta["notes"] else [])
    lines += ["## Findings", ""]
    for group, items in _by_group(found).items():
        lines += [f"### {group}", ""] + [f"- {_cap(f.body)}" for f in items] + [""]
    if not found:
        lines += ["The sweep has no comparisons to report (one setting, one checkpoint?).", ""]
    lines += ["## Tables", ""]
    if meta["constant"]:
        lines += ["All rows: " + ", ".join(f"{k} {v}" for k, v in meta["constant"].items()) + ".", ""]
    for name, (title, fmt, df) in shown.items():
        lines.append(tables.format_markdown(df, fmt, title=title))
    lines += ["## Figures", ""]
    planes = meta.get("planes", {"captions": {}, "notes": []})
    for caption, files in figs:
        lines += [f"### {caption}", ""]
        if caption == FIGURES["plane"]:
            lines += [PLANES, ""] + [f"*{n}*" for n in planes["notes"]] + ([""] if planes["notes"] else [])
        for f in files:
            lines += [f"![{f.stem}](figures/{f.name})", ""]
            if f.name in planes["captions"]:
                lines += [f"*{planes['captions'][f.name]}*", ""]
        lines += [""] if not files else []
    lines += ["## Data", "", DATA, ""]
    return "\n".join(lines)


def _html_table(title, fmt, df) -> str:
    cols, rows, numeric = tables.display_cells(df, fmt)
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td class='{'num' if n else ''}'>{esc(c)}</td>" for c, n in zip(r, numeric))
                   + "</tr>" for r in rows)
    empty = "" if rows else "<p class='note'>no rows: the sweep has no networks for this table</p>"
    return f"<h3>{esc(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{empty}"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0 1.2em}th,td{border:1px solid #ddd;padding:3px 7px}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{color:#666;font-size:.9em}.stale{background:#fde2e1;border:1px solid #c0392b;padding:.6em}figure{display:inline-block;margin:.5em;vertical-align:top}
figure img{max-width:520px;border:1px solid #eee}figcaption{max-width:520px}li{margin:.3em 0}
"""


def _html(meta, found, shown, figs) -> str:
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Linear regions report: {esc(meta['title'])}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Linear regions report: {esc(meta['title'])}</h1>",
             f"<p class='stale'><b>{esc(meta['stale'])}</b></p>" if meta.get("stale") else "",
             f"<p class='note'>Generated {esc(meta['generated'])}.</p>", f"<p>{INTRO}</p>",
             f"<p>{esc(_overview(meta))}</p>"]
    parts += [f"<p class='note'>{esc(n)}</p>" for n in meta["notes"]]
    parts.append("<h2>Findings</h2>")
    for group, items in _by_group(found).items():
        parts.append(f"<h3>{esc(group)}</h3><ul>" + "".join(f"<li>{esc(_cap(f.body))}</li>"
                                                          for f in items) + "</ul>")
    if not found:
        parts.append("<p>The sweep has no comparisons to report (one setting, one checkpoint?).</p>")
    parts.append("<h2>Tables</h2>")
    if meta["constant"]:
        parts.append("<p class='note'>All rows: " + esc(", ".join(f"{k} {v}" for k, v in meta["constant"].items()))
                     + ". Cells are mean ± std over seeds (sample std); – : undefined (a single seed, or a constant "
                       "measure).</p>")
    parts += [_html_table(*v) for v in shown.values()]
    parts.append("<h2>Figures</h2>")
    planes = meta.get("planes", {"captions": {}, "notes": []})
    for caption, files in figs:
        extra = ""
        if caption == FIGURES["plane"]:
            extra = f"<p class='note'>{esc(PLANES)}</p>" + "".join(f"<p class='note'>{esc(n)}</p>"
                                                                 for n in planes["notes"])
        parts.append(f"<h3>{esc(caption)}</h3>" + extra + "".join(
            f"<figure><a href='figures/{esc(f.name)}'><img src='figures/{esc(f.name)}' alt='{esc(f.stem)}'></a>"
            f"<figcaption class='note'>{esc(planes['captions'].get(f.name, f.stem))}</figcaption></figure>"
            for f in files))
    parts.append(f"<h2>Data</h2><p>{esc(DATA)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
