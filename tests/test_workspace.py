"""Working folders never land inside a read-only dataset, even for root."""

import os

from cxrseg.workspace import corrections_dir, workdir


def test_writable_dataset_uses_its_own_folder(tmp_path):
    assert workdir(tmp_path) == tmp_path.resolve() / ".cxrseg"
    assert corrections_dir(tmp_path) == tmp_path.resolve() / "corrections"


def test_read_only_dataset_falls_back_to_home(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("CXRSEG_HOME", str(tmp_path / "home"))
    os.chmod(data, 0o555)
    try:
        wd, cd = workdir(data), corrections_dir(data)
    finally:
        os.chmod(data, 0o755)
    assert str(wd).startswith(str(tmp_path / "home")) and str(cd).startswith(str(tmp_path / "home"))
    assert data.resolve() not in wd.parents and data.resolve() not in cd.parents
