"""`vxmtf.atomic`: a destination holds the old content or the new, never a part, and no
temporary is left behind."""

import os

import pytest

from vxmtf.atomic import atomic_path, atomic_write_text


def test_a_file_appears_whole_and_keeps_its_mode(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    os.chmod(target, 0o600)
    atomic_write_text(target, "second")
    assert target.read_text() == "second"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target, suffix=".bin") as temporary:
            assert temporary.parent == tmp_path and temporary.name.endswith(".bin")
            temporary.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_folder_appears_whole_and_is_never_replaced(tmp_path):
    target = tmp_path / "models" / "1"
    with atomic_path(target, directory=True) as staging:
        (staging / "variables").mkdir(parents=True)
        (staging / "saved_model.pb").write_bytes(b"graph")
        assert not target.exists()
    assert (target / "saved_model.pb").read_bytes() == b"graph"
    with pytest.raises(FileExistsError, match=str(target)):
        with atomic_path(target, directory=True):
            pytest.fail("the block ran for an existing folder")
    with pytest.raises(ValueError):
        with atomic_path(tmp_path / "models" / "2", directory=True) as staging:
            staging.mkdir()
            (staging / "part").write_text("x")
            raise ValueError("failed half way")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["1"]


def test_another_writer_finishing_first_wins(tmp_path):
    target = tmp_path / "1"
    with pytest.raises(FileExistsError):
        with atomic_path(target, directory=True) as staging:
            staging.mkdir()
            target.mkdir()  # someone else took the name meanwhile
    assert target.is_dir() and not any(target.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["1"]
