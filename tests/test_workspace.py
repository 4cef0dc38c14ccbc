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


def test_output_marker_written_by_many_threads_at_once(tmp_path, monkeypatch):
    """Threads of one process (correction saves, GUI workers) mark the same new folder at
    the same moment: each must succeed, and the marker must be whole."""
    import threading
    import time

    from cxrseg.workspace import OUTPUT_MARKER, is_output, mark_output

    real_replace = os.replace

    def slow_replace(src, dst):  # widens the window between writing and renaming
        time.sleep(0.01)
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", slow_replace)
    for rep in range(10):
        folder = tmp_path / f"out{rep}"
        start = threading.Barrier(8)
        errors = []

        def work(start=start, folder=folder, errors=errors):
            start.wait()
            try:
                mark_output(folder, "corrections")
            except Exception as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert is_output(folder)
        assert '"kind": "corrections"' in (folder / OUTPUT_MARKER).read_text()
        assert [p.name for p in folder.iterdir()] == [OUTPUT_MARKER]  # no temporary left
