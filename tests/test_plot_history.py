"""`benchmarks.plot_history`: training curves from run folders."""

import json

import pytest

from benchmarks import plot_history


def make_run(folder, losses, steps_per_epoch=50):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"train": {"steps_per_epoch": steps_per_epoch}}))
    lines = ["epoch,loss,preint_flow_loss,val_loss,val_preint_flow_loss"]
    lines += [f"{i},{v},0.01,{v + 0.01}," for i, v in enumerate(losses)]
    (folder / "history.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_steps_and_columns(tmp_path):
    run = make_run(tmp_path / "run", [-0.1, -0.2, -0.25])
    steps, columns = plot_history.read_history(run)
    assert steps == [50, 100, 150]
    assert columns["loss"] == [-0.1, -0.2, -0.25]
    assert columns["val_loss"] == pytest.approx([-0.09, -0.19, -0.24])
    assert all(v != v for v in columns["val_preint_flow_loss"])  # empty cells are nan


def test_main_writes_a_png_and_names_bad_input(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    a = make_run(tmp_path / "a", [-0.1, -0.2])
    b = make_run(tmp_path / "b", [-0.15])
    out = tmp_path / "curves.png"
    assert (
        plot_history.main(
            ["--run", f"a={a}", "--run", f"b={b}", "--offset", "b=100", "--out", str(out)]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_history.main(["--run", f"c={tmp_path / 'missing'}", "--out", str(out)]) == 2
    assert "history.csv" in capsys.readouterr().err
    assert plot_history.main(["--run", "nodelimiter", "--out", str(out)]) == 2
    assert "NAME=VALUE" in capsys.readouterr().err
