"""Atomic writes: a failed write leaves nothing, a finished one has the usual file mode."""

import json
import os

import pytest

from branchzoo._io import atomic_open, write_json_atomic


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"x": 1})
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(path) as f:
            f.write("half")
            raise RuntimeError("boom")
    assert json.loads(path.read_text()) == {"x": 1}
    assert os.listdir(tmp_path) == ["a.json"]


def test_written_files_follow_the_umask_not_private_temp_modes(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "b.bin", "wb") as f:
            f.write(b"\0")
    finally:
        os.umask(umask)
    assert os.stat(tmp_path / "b.bin").st_mode & 0o777 == 0o644


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="`mode`"):
        with atomic_open(tmp_path / "c", "a"):
            pass
