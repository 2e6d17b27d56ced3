"""`vxmtf.atomic`: a destination holds the old content or the new, never a part, and no
temporary is left behind."""

import os

import pytest

from vxmtf.atomic import (
    atomic_path,
    atomic_paths,
    atomic_write_text,
    check_writable,
    new_file_mode,
)


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


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002, 0o077])
def test_a_new_file_gets_the_mode_of_the_umask(tmp_path, umask):
    """As `open()` would create it (0o666 without the umask's bits), not a fixed 0o600/0o644;
    for a single file and for a group."""
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.json", "{}")
        with atomic_paths({"a": tmp_path / "a.nii.gz", "b": tmp_path / "sub" / "b.txt"}) as tmp:
            for temporary in tmp.values():
                temporary.write_text("x")
    finally:
        os.umask(previous)
    for name in ("config.json", "a.nii.gz", "sub/b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert new_file_mode() == 0o666 & ~previous


def test_a_group_is_moved_into_place_all_or_none(tmp_path):
    old = tmp_path / "moved.nii.gz"
    old.write_bytes(b"old")
    paths = {"moved": old, "warp": tmp_path / "warp.nii.gz", "none": None}
    with pytest.raises(OSError, match="no space"):
        with atomic_paths(paths) as temporaries:
            assert set(temporaries) == {"moved", "warp"}
            assert temporaries["moved"].name.endswith(".nii.gz")
            temporaries["moved"].write_bytes(b"new")
            raise OSError("no space left on device")  # while writing the warp
    assert old.read_bytes() == b"old" and not paths["warp"].exists()
    assert [p.name for p in tmp_path.iterdir()] == ["moved.nii.gz"]

    with pytest.raises(FileExistsError, match="moved.nii.gz"):
        with atomic_paths(paths, replace=False) as temporaries:
            for temporary in temporaries.values():
                temporary.write_bytes(b"new")
    assert old.read_bytes() == b"old" and not paths["warp"].exists()

    with atomic_paths(paths) as temporaries:
        for name, temporary in temporaries.items():
            temporary.write_bytes(name.encode())
    assert old.read_bytes() == b"moved" and paths["warp"].read_bytes() == b"warp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved.nii.gz", "warp.nii.gz"]


def test_check_writable_names_the_destination(tmp_path):
    assert (
        check_writable(tmp_path / "new" / "deeper" / "out.txt") == tmp_path / "new/deeper/out.txt"
    )
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"file is a file, not a folder.*warp="):
        check_writable(blocker / "warp.nii.gz", "warp")
    with pytest.raises(IsADirectoryError, match="expected a file name, not a folder"):
        check_writable(tmp_path, "moved")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_check_writable_refuses_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match=f"the folder {folder} is not writable"):
            check_writable(folder / "out.nii.gz", "warp")
    finally:
        folder.chmod(0o700)
