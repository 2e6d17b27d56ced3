"""Command-line evaluation: `python -m evaluate.dice` (argument parsing over `vxmtf.evaluation`)."""
