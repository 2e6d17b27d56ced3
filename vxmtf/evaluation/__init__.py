"""Evaluation of a registration model on labelled pairs, split by concern:

- `selection`: `select_pairs`, which pairs to evaluate (the sources themselves are
  `vxmtf.data.pairs`);
- `metrics`: `evaluate_pair` and `evaluate`, per-pair Dice, folding, SDlogJ and time;
- `report`: `dice.csv` and `summary.json` (`write_results`, `read_results`), the text table;
- `figures`: box plots of Dice per structure and an example pair.

`python -m evaluate.dice` is the command line.
"""

from vxmtf.data.pairs import PairSource, csv_pairs, dataset_pairs, file_pair, synthetic_pairs
from vxmtf.evaluation.figures import (
    SERIES_COLOURS,
    check_figures_available,
    plot_dice_boxes,
    plot_dice_series,
    plot_example,
    save_figures,
)
from vxmtf.evaluation.metrics import Evaluation, evaluate, evaluate_pair
from vxmtf.evaluation.report import (
    CSV_COLUMNS,
    format_summary,
    read_results,
    summarize,
    write_results,
)
from vxmtf.evaluation.selection import DEFAULT_SYNTHETIC_VAL_PAIRS, select_pairs

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_SYNTHETIC_VAL_PAIRS",
    "SERIES_COLOURS",
    "Evaluation",
    "PairSource",
    "check_figures_available",
    "csv_pairs",
    "dataset_pairs",
    "evaluate",
    "evaluate_pair",
    "file_pair",
    "format_summary",
    "plot_dice_boxes",
    "plot_dice_series",
    "plot_example",
    "read_results",
    "save_figures",
    "select_pairs",
    "summarize",
    "synthetic_pairs",
    "write_results",
]
