"""The demo's report: HTML and markdown with the numbers, curves and example predictions."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from ..checkpoint.io import atomic_path
from .evaluate import EvalSplit

__all__ = ["write_report", "summary_rows"]

_METRICS = [("zero-shot top-1", "acc1"), ("zero-shot top-5", "acc5"), ("mean per-class recall", "mean_per_class_recall"),
            ("text→image R@1", "image_retrieval_recall@1"), ("text→image R@5", "image_retrieval_recall@5"),
            ("text→image R@10", "image_retrieval_recall@10"), ("image→text R@1", "text_retrieval_recall@1"),
            ("image→text R@5", "text_retrieval_recall@5"), ("image→text R@10", "text_retrieval_recall@10")]  # fmt: skip


def summary_rows(results: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = [("metric", *results)]
    for label, key in _METRICS:
        rows.append((label, *(f"{r[key]:.1%}" for r in results.values())))
    rows.append(("classes / images", *(f"{r['n_classes']} / {r['n_images']}" for r in results.values())))
    return rows


def _grid(path: Path, split: EvalSplit, examples: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 6
    rows = (len(examples) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.6, rows * 2.9), dpi=90)
    for ax in axes.flat:
        ax.axis("off")
    for ax, ex in zip(axes.flat, examples):
        ax.imshow(split.images[ex["index"]])
        ok = ex["top3"][0][0] == ex["truth"]
        lines = [f"{'✓' if i == 0 and ok else ' '}{name[:22]} {p:.0%}" for i, (name, p) in enumerate(ex["top3"])]
        ax.set_title(f"{ex['truth'][:24]}\n" + "\n".join(lines), fontsize=7, loc="left",
                     color="darkgreen" if ok else "darkred")  # fmt: skip
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out_dir: Path, results: dict[str, dict[str, Any]], splits: dict[str, EvalSplit],
                 run_info: dict[str, Any], curves: list[Path], shift: dict[str, Any] | None = None) -> Path:  # fmt: skip
    """``shift``: style-shift rows and robustness summary (``eval.shift``), shown with a plot."""
    out_dir.mkdir(parents=True, exist_ok=True)
    grids = {}
    for name, split in splits.items():
        grids[name] = out_dir / f"predictions_{name.replace(' ', '_').replace('-', '')}.png"
        _grid(grids[name], split, results[name]["examples"])
    if shift is not None:
        from ..eval.shift import plot_shift

        plot_shift(out_dir / "style_shift.png", shift["styles"])
        curves = [*curves, out_dir / "style_shift.png"]
    rows = summary_rows(results)
    shift_rows = _shift_rows(shift)
    md = _markdown(rows, shift_rows, results, run_info, curves, grids, out_dir)
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(md, encoding="utf-8")
    with atomic_path(out_dir / "report.html") as tmp:
        tmp.write_text(_html(rows, shift_rows, results, run_info, curves, grids, out_dir), encoding="utf-8")
    slim = {k: {m: v for m, v in r.items() if m not in ("confusion_matrix", "per_class_accuracy")} for k, r in results.items()}
    with atomic_path(out_dir / "results.json") as tmp:
        tmp.write_text(json.dumps({"run": run_info, "results": slim, "style_shift": shift}, indent=2))
    return out_dir / "report.html"


def _shift_rows(shift: dict[str, Any] | None) -> list[tuple[str, ...]]:
    if shift is None:
        return []
    rows = [("style (trained concepts)", "top-1", "top-5", "change from training style")]
    base = shift["training_style_acc1"]
    rows += [(str(r["style"]), f"{r['acc1']:.1%}", f"{r['acc5']:.1%}", f"{r['acc1'] - base:+.1%}") for r in shift["styles"]]
    rows.append(("other styles, mean (kept fraction)", f"{shift['other_styles_acc1']:.1%}", "",
                 f"{shift['kept_fraction']:.0%} kept"))  # fmt: skip
    return rows


def _table_md(rows: list[tuple[str, ...]]) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + ["| " + " | ".join(r) + " |" for r in rows[1:]]


def _table_html(rows: list[tuple[str, ...]]) -> str:
    e = html.escape
    if not rows:
        return ""
    table = "<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in rows[0]) + "</tr>"
    return table + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows[1:]) + "</table>"


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _markdown(rows, shift_rows, results, run_info, curves, grids, root) -> str:
    lines = ["# clipforge demo report", "", _run_sentence(run_info), ""]
    lines += _table_md(rows)
    if shift_rows:
        lines += ["", "## Robustness to style shift", "", _SHIFT_SENTENCE, ""] + _table_md(shift_rows)
    for name, r in results.items():
        lines += ["", f"## Nearest confusions ({name})", "", "| true | predicted | count |", "|---|---|---|"]
        lines += [f"| {c['true']} | {c['predicted']} | {c['count']} |" for c in r["confusions"]]
    lines += ["", "## Training curves", ""] + [f"![{p.stem}]({_rel(p, root)})" for p in curves]
    lines += ["", "## Example predictions", ""] + [f"![{n}]({_rel(p, root)})" for n, p in grids.items()]
    return "\n".join(lines) + "\n"


_SHIFT_SENTENCE = ("The trained concepts drawn by other artists and renderers (OpenMoji's colour font, Google's Noto "
                   "Color Emoji) and degraded (grey-scale, blurred): no emoji rendering but the OpenMoji drawings is "
                   "ever trained on.")  # fmt: skip


def _run_sentence(info: dict[str, Any]) -> str:
    mixed = info.get("clipart_sources") or []
    extra = f", mixed with {' and '.join(mixed)} clip-art (concepts held out of OpenMoji left out)" if mixed else ""
    return (f"Model `{info['model']}` ({info['parameters'] / 1e6:.1f} M parameters, {info.get('recipe', 'openmoji')} "
            f"recipe) trained for {info['steps']} steps ({info['samples_seen']:,} samples, {info['minutes']:.1f} min) "
            f"on {info['train_images']:,} OpenMoji images of {info['train_concepts']:,} concepts{extra}; "
            f"held-out concepts were never seen in training. Data: {info['attribution']}")  # fmt: skip


def _html(rows, shift_rows, results, run_info, curves, grids, root) -> str:
    e = html.escape
    table = _table_html(rows)
    if shift_rows:
        table += f"<h2>Robustness to style shift</h2><p>{e(_SHIFT_SENTENCE)}</p>" + _table_html(shift_rows)
    confusions = ""
    for name, r in results.items():
        confusions += f"<h3>Nearest confusions: {e(name)}</h3><table><tr><th>true</th><th>predicted</th><th>count</th></tr>"
        confusions += "".join(f"<tr><td>{e(c['true'])}</td><td>{e(c['predicted'])}</td><td>{c['count']}</td></tr>"
                              for c in r["confusions"]) + "</table>"  # fmt: skip
    images = "".join(f'<img src="{e(_rel(p, root))}" alt="{e(p.stem)}">' for p in curves)
    grid_html = "".join(f"<h3>{e(n)}</h3><img class=grid src=\"{e(_rel(p, root))}\" alt=\"predictions {e(n)}\">" for n, p in grids.items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>clipforge demo report</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;margin:.5em 0}}img.grid{{border:1px solid #ddd}}</style>
</head><body><h1>clipforge demo report</h1><p>{e(_run_sentence(run_info))}</p>
<h2>Results</h2>{table}<h2>Training curves</h2>{images}<h2>Example predictions (top-3)</h2>{grid_html}
<h2>Where it goes wrong</h2>{confusions}</body></html>
"""
