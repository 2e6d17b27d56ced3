"""Speed and memory benchmarks of vxmtf: `python -m benchmarks --help`.

Modules: `harness` (runs cases, one process each, and writes `results/`), `case` (one case in
this process), `workloads` and `breakdown` (what is measured), `flops` (analytic convolution
FLOPs), `report` (Markdown tables), `bench_ncc` (the NCC micro-benchmark). See `NOTES.md`.
Importing the package has no side effects and does not import TensorFlow.
"""
