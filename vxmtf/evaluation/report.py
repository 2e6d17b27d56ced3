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
from vxmtf.evaluation.metrics import Evaluation, nanmean, nanstd

__all__ = ["CSV_COLUMNS", "format_summary", "read_results", "summarize", "write_results"]

#: Columns of `dice.csv`, one row per (pair, label).
CSV_COLUMNS = ("pair", "moving", "fixed", "label", "dice_before", "dice_after")


def summarize(evaluation, model=None, data=None) -> dict:
    """The numbers `summary.json` holds (see `vxmtf.evaluation.metrics` for the statistics):
    JSON-ready, NaN as None."""
    before = [p["dice_before"] for p in evaluation.pairs]
    after = [p["dice_after"] for p in evaluation.pairs]
    seconds = [p["seconds"] for p in evaluation.pairs]
    labels = sorted({r["label"] for r in evaluation.records})
    per_label = {
        key: {
            str(label): nanmean([r[key] for r in evaluation.records if r["label"] == label])
            for label in labels
        }
        for key in ("dice_after", "dice_before")
    }
    timed = seconds[1:] if len(seconds) > 1 else seconds
    summary = {
        "model": None if model is None else str(model),
        "data": None if data is None else str(data),
        "pairs": len(evaluation.pairs),
        "labels": labels,
        "dice_before_mean": nanmean(before),
        "dice_before_std": nanstd(before),
        "dice_after_mean": nanmean(after),
        "dice_after_std": nanstd(after),
        "dice_per_label": per_label["dice_after"],
        "dice_per_label_before": per_label["dice_before"],
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


def write_results(evaluation: Evaluation, out_dir, model=None, data=None) -> dict:
    """Writes `dice.csv` and `summary.json` into `out_dir` (atomically); returns the summary."""
    out_dir = Path(out_dir)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for record in evaluation.records:
        writer.writerow([_format(record[c]) for c in CSV_COLUMNS])
    atomic_write_text(out_dir / "dice.csv", buffer.getvalue())
    summary = summarize(evaluation, model=model, data=data)
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    """A plain-text table: Dice per label (before, after), then the summary numbers."""

    def num(value, digits=3):
        return "  nan" if value is None else f"{value:.{digits}f}"

    lines = [f"{'label':>8}  {'before':>7}  {'after':>7}"]
    for label, after in summary["dice_per_label"].items():
        before = summary["dice_per_label_before"][label]
        lines.append(f"{label:>8}  {num(before):>7}  {num(after):>7}")
    timing = "first pair excluded" if summary["timing_excludes_first_pair"] else "with warm-up"
    folding = summary["folding_fraction_mean"]
    lines += [
        "",
        f"pairs                      {summary['pairs']}",
        f"Dice before (mean ± std)   {num(summary['dice_before_mean'])} ± "
        f"{num(summary['dice_before_std'])}",
        f"Dice after  (mean ± std)   {num(summary['dice_after_mean'])} ± "
        f"{num(summary['dice_after_std'])}",
        f"folding fraction (mean)    {num(folding, 5)}"
        + ("" if folding is None else f" ({100 * folding:.3f} % of voxels)"),
        f"SDlogJ (mean)              {num(summary['sdlogj_mean'])}",
        f"seconds per pair           {num(summary['seconds_per_pair'])} ({timing})",
        "Dice: per pair the mean over labels (NaN, a label absent from both maps, left out), "
        "then mean ± std over pairs.",
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
    for key in ("dice_before", "dice_after"):
        record[key] = float(row[key])
    return record
