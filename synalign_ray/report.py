"""Run report: one self-contained HTML page (PNG figures inlined) from a completed run directory.

Figures: t-SNE map of real vs synthetic before and after alignment, GP vs random coverage, weights and effective
sample size, per-label counts, tokens and stage timings; plus the metric table for all / random / aligned rows.
"""

from __future__ import annotations

import base64
import html
import io as _bytes_io
import logging
from typing import Any

import numpy as np
import pyarrow as pa

from synalign_ray import io, metrics
from synalign_ray.alignment.rows import FolderRows
from synalign_ray.config import SynAlignConfig
from synalign_ray.errors import InputError

log = logging.getLogger(__name__)

# t-SNE is quadratic-ish in points: the map uses at most this many real and synthetic rows (seeded samples).
MAP_ROWS = 1500


def _png(fig) -> str:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _stage(run_dir: io.Location, cfg: SynAlignConfig, name: str) -> tuple[dict[str, Any], FolderRows]:
    """A complete stage folder's manifest and its rows, left in the folder (the report scans ids and small columns
    and reads only the rows it shows)."""
    from synalign_ray.run_folder import RunFolder

    folder = RunFolder(run_dir.join(name), cfg.storage)
    if (manifest := folder.manifest()) is None:
        raise InputError(f"{folder.url} is not complete: run `synalign run` to the end before the report")
    return manifest, FolderRows(folder.url, tuple(manifest["parts"]), cfg.storage)


def _in_order(rows: FolderRows, ids: np.ndarray, columns: list[str]) -> pa.Table:
    """The rows with these ids, in the order given (FolderRows.take returns them in id order)."""
    table = rows.take(ids, columns)
    return table.take(pa.array(np.searchsorted(table.column(io.ROW_ID).to_numpy(), ids)))


def frontier_figure(al_manifest: dict[str, Any]) -> str | None:
    """The MMD–diversity frontier of the λ search (one point per fit tried, the chosen λ marked) as a PNG, or None
    when the aligned manifest has no frontier (importance weighting only)."""
    search = al_manifest.get("fit", {}).get("entropy_search")
    if not search or not search.get("frontier"):
        return None
    import matplotlib.pyplot as plt

    points = search["frontier"]
    distinct = [p["expected_distinct"] for p in points]
    mmd = [p["mmd2_features"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(distinct, mmd, marker="o", color="tab:gray")
    for p in points:
        ax.annotate(f"λ={p['entropy']:.2g}", (p["expected_distinct"], p["mmd2_features"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    chosen = [p for p in points if p["entropy"] == search["entropy"]]
    ax.scatter([p["expected_distinct"] for p in chosen], [p["mmd2_features"] for p in chosen], s=80,
               color="tab:red", zorder=3, label=f"chosen ({search['mode']})")
    target = search.get("targets", {}).get("min_distinct")
    if target is not None:
        ax.axvline(target, color="tab:red", linestyle="--", linewidth=1, label=f"min_distinct {target:g}")
    ax.set_xlabel("expected share of distinct rows in the draw")
    ax.set_ylabel("MMD² to the fit rows (feature space)")
    ax.legend(fontsize=8)
    return _png(fig)


def build_figures(run_dir: io.Location, cfg: SynAlignConfig, summary: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(cfg.selection.seed)
    _, real = _stage(run_dir, cfg, "embeddings")
    _, gen = _stage(run_dir, cfg, "generated_embeddings")
    gen = FolderRows(gen.url, gen.parts, cfg.storage, kept_column="drop_reason")  # the kept rows
    al_manifest, _ = _stage(run_dir, cfg, "aligned")
    aligned = io.read_parts(run_dir.join("aligned"), al_manifest, ["generated_id", "weight"])
    gen_gen_manifest = io.read_manifest(run_dir.join("generated"))
    real_ids = real.scan([]).column(io.ROW_ID).to_numpy()
    kept = gen.scan(["group_id", "demo_row_ids"])
    figures: dict[str, str] = {}

    # Groups' anchors (first demonstration of each group, in issue order) are on the map, MAP_ROWS at most.
    groups = sorted({(g, d[0]) for g, d in zip(kept.column("group_id").to_pylist(),
                                               kept.column("demo_row_ids").to_pylist())})[:MAP_ROWS]
    at = np.searchsorted(real_ids, [a for _, a in groups]).astype(np.int64)
    anchors = np.asarray([p for p, (_, a) in zip(at, groups) if p < len(real_ids) and real_ids[p] == a], np.int64)
    others = np.setdiff1d(np.arange(len(real_ids)), anchors)
    take = rng.choice(others, size=min(len(others), max(MAP_ROWS - len(anchors), 0)), replace=False)
    real_idx = np.concatenate([anchors, np.sort(take)])
    kept_ids = kept.column(io.ROW_ID).to_numpy()
    gen_idx = np.sort(rng.choice(len(kept_ids), size=min(len(kept_ids), MAP_ROWS), replace=False))
    real_emb = io.embeddings_from_arrow(_in_order(real, real_ids[real_idx], [io.EMBEDDING]).column(io.EMBEDDING))
    gen_emb = io.embeddings_from_arrow(gen.take(kept_ids[gen_idx], [io.EMBEDDING]).column(io.EMBEDDING))
    points = metrics.tsne_map(np.vstack([real_emb, gen_emb]), seed=cfg.selection.seed)
    real_2d, gen_2d = points[:len(real_idx)], points[len(real_idx):]
    gen_pos = {int(kept_ids[j]): i for i, j in enumerate(gen_idx)}
    chosen = [gen_pos[int(j)] for j in aligned.column("generated_id").to_pylist() if j is not None and int(j) in gen_pos]

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), sharex=True, sharey=True)
    for ax, title, pts in ((axes[0], "before alignment: all generated rows", gen_2d),
                           (axes[1], "after alignment: weighted resample", gen_2d[chosen] if chosen else gen_2d[:0])):
        ax.scatter(real_2d[:, 0], real_2d[:, 1], s=4, alpha=0.35, label="real", color="tab:blue")
        ax.scatter(pts[:, 0], pts[:, 1], s=10, alpha=0.7, label="synthetic", color="tab:orange")
        ax.set_title(title)
        ax.legend(loc="lower right", fontsize=8)
    figures["map"] = _png(fig)

    k = cfg.selection.k
    if len(anchors) >= 2 and len(real_idx) > k + 1:
        steps = len(anchors)
        gp_curve = metrics.convex_hull_coverage(real_2d, np.arange(steps), k)
        rand_curves = [metrics.convex_hull_coverage(
            real_2d, np.random.default_rng(cfg.selection.seed + s).choice(len(real_idx), size=steps, replace=False), k)
            for s in range(5)]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(np.arange(1, steps + 1), gp_curve, label="GP exploration-aware (this run)", color="tab:green")
        mean = np.mean(rand_curves, axis=0)
        ax.plot(np.arange(1, steps + 1), mean, label="uniform random (mean of 5 seeds)", color="tab:gray")
        ax.fill_between(np.arange(1, steps + 1), np.min(rand_curves, axis=0), np.max(rand_curves, axis=0),
                        color="tab:gray", alpha=0.2)
        ax.set_xlabel("selection step (group)")
        ax.set_ylabel("convex-hull coverage of the real map")
        ax.legend(fontsize=8)
        figures["coverage"] = _png(fig)

    if "weight" in aligned.column_names:
        weights = np.asarray(aligned.column("weight").to_numpy(zero_copy_only=False), dtype=float)
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.hist(weights, bins=40, color="tab:purple")
        ess = al_manifest.get("fit", {}).get("ess")
        ax.set_title(f"weights of resampled rows (ESS {ess:.0f} of {len(kept_ids)})" if ess else "weights")
        ax.set_xlabel("ω")
        figures["weights"] = _png(fig)

    if (frontier := frontier_figure(al_manifest)) is not None:
        figures["frontier"] = frontier

    per_label = al_manifest["counts"].get("per_label", {})
    if per_label:
        names = list(per_label)
        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(names))
        for i, (key, color) in enumerate((("real", "tab:blue"), ("synthetic", "tab:orange"),
                                          ("resampled", "tab:green"))):
            vals = np.array([per_label[n][key] for n in names], dtype=float)
            ax.bar(x + (i - 1) * 0.27, vals / max(vals.sum(), 1), width=0.27, label=key, color=color)
        ax.set_xticks(x, names)
        ax.set_ylabel("share of rows")
        ax.legend(fontsize=8)
        figures["labels"] = _png(fig)

    tokens = gen_gen_manifest["tokens"]
    timings = summary.get("timings_this_invocation", {})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    stages = list(tokens)
    axes[0].bar(np.arange(len(stages)) - 0.2, [tokens[s]["prompt"] for s in stages], width=0.4, label="prompt")
    axes[0].bar(np.arange(len(stages)) + 0.2, [tokens[s]["completion"] for s in stages], width=0.4, label="completion")
    axes[0].set_xticks(np.arange(len(stages)), stages)
    axes[0].set_title("tokens per prompting stage")
    axes[0].legend(fontsize=8)
    if timings:
        axes[1].barh(list(timings), list(timings.values()), color="tab:cyan")
        axes[1].set_xlabel("seconds (this invocation)")
        axes[1].set_title("stage wall time")
    figures["tokens"] = _png(fig)
    return figures


def _cell(value: Any) -> str:
    if value is None:
        return "<td>–</td>"
    return f"<td>{value:.3g}</td>" if isinstance(value, float) else f"<td>{html.escape(str(value))}</td>"


def _quality_table(quality: dict[str, Any]) -> str:
    """all generated / kept / aligned draw / real ceiling, each scored against the same real reference."""
    cols = [("rows", "rows"), ("two_sample_auc", "two-sample AUC (0.5 = indistinguishable)"),
            ("mauve", "MAUVE (1 = same distribution)"), ("label_agreement", "label agreement"),
            ("nearest_real_cosine_median", "nearest-real cosine (median)"), ("near_copy_rate", "near-copies of input"),
            ("distinct_2", "distinct-2"), ("within_group_cosine", "within-group cosine")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    rows = "".join(f"<tr><th>{html.escape(name)}</th>{''.join(_cell(s.get(k)) for k, _ in cols)}</tr>"
                   for name, s in quality.get("sets", {}).items())
    return (f"<p>Scored against {html.escape(str(quality.get('reference', '')))}.</p>"
            f"<table><tr><th></th>{head}</tr>{rows}</table>")


# Rows of each kind shown per label in the report.
SHOWN_ROWS = 6


def text_samples(run_dir: io.Location, cfg: SynAlignConfig, seed: int) -> str:
    """Per label, side by side as a person reads them: demonstrations, kept rows, dropped rows with the check they
    failed, and rows the alignment drew (seeded samples). Only the texts shown are read."""
    rng = np.random.default_rng(seed)
    _, real = _stage(run_dir, cfg, "embeddings")
    _, gen = _stage(run_dir, cfg, "generated_embeddings")
    al_manifest, _ = _stage(run_dir, cfg, "aligned")
    label_col = cfg.data.label_column
    index = gen.scan(["label", "drop_reason", "demo_row_ids"])
    ids = index.column(io.ROW_ID).to_numpy()
    gen_labels = index.column("label").to_pylist()
    reasons = index.column("drop_reason").to_pylist()
    demo_lists = index.column("demo_row_ids").to_pylist()
    drawn_ids = set(io.read_parts(run_dir.join("aligned"), al_manifest, ["generated_id"])
                    .column("generated_id").drop_null().to_pylist())

    def pick(positions: np.ndarray, n: int) -> np.ndarray:
        return positions[np.sort(rng.choice(len(positions), size=min(n, len(positions)), replace=False))]

    shown = []  # per label: its title and (title, generated-row positions or real ids) per column
    for label in sorted(set(gen_labels), key=str):
        rows = np.flatnonzero([v == label for v in gen_labels]) if label is not None else np.arange(len(ids))
        demo_ids: list[int] = []
        for demos in [demo_lists[rows[0]], demo_lists[rows[-1]]] if len(rows) else []:
            demo_ids += [i for i in demos[:SHOWN_ROWS // 2] if i not in demo_ids]
        kept = rows[[reasons[i] is None for i in rows]] if len(rows) else rows
        dropped = rows[[reasons[i] is not None for i in rows]] if len(rows) else rows
        drawn = kept[[int(ids[i]) in drawn_ids for i in kept]] if len(kept) else kept
        shown.append((label, demo_ids, [(f"kept ({len(kept)})", pick(kept, SHOWN_ROWS)),
                                        (f"dropped ({len(dropped)})", pick(dropped, SHOWN_ROWS)),
                                        (f"drawn by alignment ({len(drawn)} distinct)", pick(drawn, SHOWN_ROWS))]))
    wanted = np.unique(np.concatenate([p for _, _, cols in shown for _, p in cols] + [np.zeros(0, np.int64)]))
    texts = dict(zip(ids[wanted].tolist(), gen.take(ids[wanted], ["text"]).column("text").to_pylist()))
    demo_wanted = np.unique(np.asarray([i for _, d, _ in shown for i in d], np.int64))
    demo_rows = real.take(demo_wanted, [cfg.data.text_column])
    real_text = dict(zip(demo_rows.column(io.ROW_ID).to_pylist(), demo_rows.column(cfg.data.text_column).to_pylist()))
    sections = []
    for label, demo_ids, cols in shown:
        lists = [("demonstrations (real)", [real_text.get(i, "") for i in demo_ids])]
        for title, positions in cols:
            lists.append((title, [f"[{reasons[i]}] {texts[int(ids[i])]}" if reasons[i] is not None
                                  else texts[int(ids[i])] for i in positions]))
        cells = "".join(f"<td><b>{html.escape(title)}</b><ul>" + "".join(f"<li>{html.escape(t[:300])}</li>" for t in texts_)
                        + "</ul></td>" for title, texts_ in lists)
        sections.append(f"<h3>{html.escape(str(label_col or 'rows'))}: {html.escape(str(label))}</h3>"
                        f"<table class='text'><tr>{cells}</tr></table>")
    return "".join(sections)


def _metric_table(m: dict[str, Any]) -> str:
    cols = [("rows", "rows"), ("mmd2_rbf", "MMD² (RBF)"), ("wasserstein1", "Wasserstein-1"),
            ("sliced_wasserstein", "sliced W"), ("vocabulary_size", "vocabulary"), ("duplicate_rate", "duplicates")]
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in cols)
    rows = []
    for name in ("all", "random", "aligned"):
        if name not in m:
            continue
        cells = "".join(f"<td>{m[name].get(key, ''):.4g}</td>" if isinstance(m[name].get(key), float)
                        else f"<td>{m[name].get(key, '')}</td>" for key, _ in cols)
        rows.append(f"<tr><th>{name}</th>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def write_report(run_dir: io.Location, cfg: SynAlignConfig, summary: dict[str, Any] | None = None) -> str:
    """Render the report to RUN_DIR/report/index.html; returns its location."""
    summary = summary if summary is not None else (io.read_manifest(run_dir) or {})
    figures = build_figures(run_dir, cfg, summary)
    al = io.read_manifest(run_dir.join("aligned"))
    gen = io.read_manifest(run_dir.join("generated"))
    counts = al["counts"]
    captions = {"map": "t-SNE map of real and synthetic embeddings",
                "coverage": "coverage of the real map by selected demonstration groups",
                "weights": "alignment weights", "frontier": "MMD–diversity frontier of the λ search",
                "labels": "per-label shares",
                "tokens": "token usage and stage timings"}
    body = "".join(f"<figure><img alt='{k}' src='data:image/png;base64,{v}'><figcaption>{captions[k]}"
                   f"</figcaption></figure>" for k, v in figures.items())
    facts = [
        ("run directory", run_dir.url), ("real rows", summary.get("counts", {}).get("real_rows", "")),
        ("groups done / failed", f"{gen['groups_done']} / {len(gen['failed_groups'])}"),
        ("generated rows (exact duplicates removed)",
         f"{gen['rows'] + gen.get('dropped_rows', 0)} ({gen['duplicates_removed']})"),
        ("kept rows (failed a quality check, by check)",
         f"{summary.get('counts', {}).get('kept_rows', '')} ({summary.get('counts', {}).get('failed_checks', {})})"),
        ("aligned rows (distinct)", f"{counts['rows']} ({counts['distinct_fraction']:.1%})"),
        ("effective sample size", f"{al.get('fit', {}).get('ess', float('nan')):.1f}"),
        ("generator busy (share of generation wall time)", f"{gen['pool']['busy_fraction']:.1%}"),
        ("output tokens/s", gen["pool"]["output_tokens_per_second"]),
        ("Ray nodes of the generators / alignment shards",
         f"{len(set(gen['pool'].get('nodes', [])))} / {len(set(al.get('shard_nodes', [])))}"),
        ("model / mode / format / preset",
         f"{gen['model']} / {gen['mode']} / {gen.get('output_format', 'json')} / {gen['preset']}"),
    ]
    fact_rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>synalign run report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
th{{background:#f4f4f4}}figure{{display:inline-block;margin:1em}}img{{max-width:100%}}
table.text td{{text-align:left;vertical-align:top;width:25%;font-size:90%}}</style></head><body>
<h1>synalign run report</h1><table>{fact_rows}</table>
<h2>Quality of the rows</h2>{_quality_table(summary.get('quality') or {})}
<h2>The rows themselves</h2>{text_samples(run_dir, cfg, cfg.quality.seed)}
<h2>Distribution distance to the real rows the fit used (in-sample)</h2>{_metric_table(al.get('metrics', {}))}
<h2>Distance to held-out real rows (never seen by the fit)</h2>{_metric_table(al.get('metrics_held_out') or {})}
{body}</body></html>"""
    loc = run_dir.join("report")
    target = loc.join("index.html")
    io.write_bytes(loc, "index.html", page.encode(), cfg.storage)
    log.info("report written to %s", target.url)
    return target.url
