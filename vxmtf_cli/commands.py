"""The console scripts `vxmtf-train`, `vxmtf-register`, `vxmtf-evaluate` and `vxmtf-export`:
the same tools as `python -m train`, `python -m vxmtf.register`, `python -m evaluate.dice` and
`python -m vxmtf.export`, with the environment set and TensorFlow imported quietly before the
tool's module is (`vxmtf_cli.start`), so that no restart is needed."""

from __future__ import annotations

import importlib

import vxmtf_cli


def _run(module: str) -> int:
    vxmtf_cli.start()
    return importlib.import_module(module).main()


def train() -> int:
    return _run("train.__main__")


def register() -> int:
    return _run("vxmtf.register")


def evaluate() -> int:
    return _run("evaluate.dice")


def export() -> int:
    return _run("vxmtf.export")
