"""The report of an evaluation: `dice.csv`, `summary.json`, a plain-text table, and a reader.

`dice.csv` has one row per (pair, label), columns `CSV_COLUMNS`; `summary.json` the means and
per-label figures of `summarize`. `read_results` reads both back (for comparisons across
methods, as `benchmarks.compare_ants` makes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from vxmtf.atomic import atomic_write_text
from vxmtf.evaluation.metrics import Evaluation, count_infinite, finite_mean, nanmean, nanstd

__all__ = ["CSV_COLUMNS", "format_summary", "read_results", "summarize", "write_results"]

#: Columns of `dice.csv`, one row per (pair, label). The first six are those of earlier
#: versions; `hd95_*` are in mm (inf: the label is in one map only), `structure` is the label's
#: name from the dataset (empty when unknown).
CSV_COLUMNS = (
    "pair",
    "moving",
    "fixed",
    "label",
    "dice_before",
    "dice_after",
    "hd95_before",
    "hd95_after",
    "structure",
)


def summarize(evaluation, model=None, data=None, settings=None) -> dict:
    """The numbers `summary.json` holds (see `vxmtf.evaluation.metrics` for the statistics):
    JSON-ready, NaN as None."""
    before = [p["dice_before"] for p in evaluation.pairs]
    after = [p["dice_after"] for p in evaluation.pairs]
    seconds = [p["seconds"] for p in evaluation.pairs]
    labels = sorted({r["label"] for r in evaluation.records})

    def per_label(key, mean):
        return {
            str(label): mean([r[key] for r in evaluation.records if r["label"] == label])
            for label in labels
        }

    hd95_after = [r["hd95_after"] for r in evaluation.records]
    names = evaluation.label_names or {}
    timed = seconds[1:] if len(seconds) > 1 else seconds
    summary = {
        "model": None if model is None else str(model),
        "data": None if data is None else str(data),
        **(settings or {}),
        "pairs": len(evaluation.pairs),
        "labels": labels,
        "dice_before_mean": nanmean(before),
        "dice_before_std": nanstd(before),
        "dice_after_mean": nanmean(after),
        "dice_after_std": nanstd(after),
        "dice_per_label": per_label("dice_after", nanmean),
        "dice_per_label_before": per_label("dice_before", nanmean),
        "hd95_before_mean": finite_mean([p["hd95_before"] for p in evaluation.pairs]),
        "hd95_after_mean": finite_mean([p["hd95_after"] for p in evaluation.pairs]),
        "hd95_after_std": nanstd([p["hd95_after"] for p in evaluation.pairs]),
        "hd95_per_label": per_label("hd95_after", finite_mean),
        "hd95_per_label_before": per_label("hd95_before", finite_mean),
        "hd95_infinite": count_infinite(hd95_after),
        "structures": {str(label): names[label] for label in labels if label in names},
        "folding_fraction_mean": nanmean([p["folding_fraction"] for p in evaluation.pairs]),
        "sdlogj_mean": nanmean([p["sdlogj"] for p in evaluation.pairs]),
        "seconds_per_pair": nanmean(timed),
        "seconds_first_pair": seconds[0] if seconds else math.nan,
        "timing_excludes_first_pair": len(seconds) > 1,
        "per_pair": evaluation.pairs,
    }
    return _json_safe(summary)


def _json_safe(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _format(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6f}"
    return str(value)


def write_results(evaluation: Evaluation, out_dir, model=None, data=None, settings=None) -> dict:
    """Writes `dice.csv` and `summary.json` into `out_dir` (atomically); returns the summary.
    `settings` (e.g. `Registrator.settings()`: refinement, affine stage) go into the summary."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in evaluation.records:
        writer.writerow([_format(record[c]) for c in CSV_COLUMNS])
    atomic_write_text(out_dir / "dice.csv", buffer.getvalue())
    summary = summarize(evaluation, model=model, data=data, settings=settings)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table: Dice per label (before, after), then the summary numbers."""

    def num(value, digits=3):
        return "  nan" if value is None else f"{value:.{digits}f}"

    names = summary.get("structures") or {}
    width = max([len(n) for n in names.values()] + [0])
    hd95 = summary.get("hd95_per_label") or {}
    lines = [
        f"{'label':>8}  {'before':>7}  {'after':>7}  {'HD95 mm':>7}"
        + ("  structure" if names else "")
    ]
    for label, after in summary["dice_per_label"].items():
        before = summary["dice_per_label_before"][label]
        line = f"{label:>8}  {num(before):>7}  {num(after):>7}  {num(hd95.get(label), 2):>7}"
        lines.append(line + (f"  {names.get(label, ''):<{width}}" if names else ""))
    timing = "first pair excluded" if summary["timing_excludes_first_pair"] else "with warm-up"
    folding = summary["folding_fraction_mean"]
    lines += [
        "",
        f"pairs                      {summary['pairs']}",
        f"Dice before (mean ± std)   {num(summary['dice_before_mean'])} ± "
        f"{num(summary['dice_before_std'])}",
        f"Dice after  (mean ± std)   {num(summary['dice_after_mean'])} ± "
        f"{num(summary['dice_after_std'])}",
        f"HD95 after  (mean ± std)   {num(summary.get('hd95_after_mean'), 2)} ± "
        f"{num(summary.get('hd95_after_std'), 2)} mm (before "
        f"{num(summary.get('hd95_before_mean'), 2)} mm)"
        + (
            f"; {summary['hd95_infinite']} structure(s) lost (inf, left out)"
            if summary.get("hd95_infinite")
            else ""
        ),
        f"folding fraction (mean)    {num(folding, 5)}"
        + ("" if folding is None else f" ({100 * folding:.3f} % of voxels)"),
        f"SDlogJ (mean)              {num(summary['sdlogj_mean'])}",
        f"seconds per pair           {num(summary['seconds_per_pair'])} ({timing})",
        "Dice: per pair the mean over labels (NaN, a label absent from both maps, left out), "
        "then mean ± std over pairs. HD95: 95th percentile of the surface distance in mm.",
    ]
    return "\n".join(lines)


def read_results(folder) -> tuple[dict, list[dict]]:
    """`(summary, records)` of a folder `write_results` wrote: the summary as saved, and one dict
    per `dice.csv` row with `pair` and `label` as ints and the Dice columns as floats (NaN for
    `nan`).

    Raises:
        FileNotFoundError: the folder lacks summary.json or dice.csv.
        ValueError: either file is not what `write_results` writes.
    """
    folder = Path(folder)
    for name in ("summary.json", "dice.csv"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"Expected an evaluate.dice output folder with {name}. Received: {folder}"
            )
    try:
        summary = json.loads((folder / "summary.json").read_text())
        with open(folder / "dice.csv", newline="") as handle:
            records = [_parse_record(row) for row in csv.DictReader(handle)]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"Could not read the evaluation results in {folder}: expected the summary.json and "
            f"dice.csv of evaluate.dice. Received: error={type(error).__name__}: {error}"
        ) from error
    return summary, records


def _parse_record(row: dict) -> dict:
    record = dict(row)
    record["pair"], record["label"] = int(row["pair"]), int(row["label"])
    for key in ("dice_before", "dice_after", "hd95_before", "hd95_after"):
        if key in row:  # hd95 columns: not in files of earlier versions
            record[key] = float(row[key])
    return record
