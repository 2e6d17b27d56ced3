"""README.md: its Python quickstart runs as written, and its test command is the one CI runs."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_python_example_runs_and_gives_documented_shapes():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block is not None, "README.md has no ```python example"
    namespace = {}
    exec(compile(block.group(1), "README.md", "exec"), namespace)
    assert tuple(namespace["moved"].shape) == (1, 32, 32, 32, 1)
    assert tuple(namespace["displacement"].shape) == (1, 32, 32, 32, 3)
    moved_labels = np.asarray(namespace["moved_labels"])
    # Nearest-neighbour warping only ever copies label values.
    assert set(np.unique(moved_labels)) <= set(np.unique(namespace["labels"]))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = 'python -m pytest -m "slow or not slow"'
    assert command in readme
    assert any(line.strip() == command for line in ci.splitlines())
