"""deeplab_tf.atomic: no-replace publishing, version claims and stale temporary cleanup."""

import os
import subprocess
import sys
import threading

import pytest

from deeplab_tf import atomic


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_write_never_replaces_unless_asked(tmp_path):
    path = tmp_path / "a.json"
    atomic.write_json(path, {"v": 1})
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        atomic.write_json(path, {"v": 2}, overwrite=False)
    assert '"v": 1' in path.read_text()
    atomic.write_json(path, {"v": 3})
    assert '"v": 3' in path.read_text()
    assert os.listdir(tmp_path) == ["a.json"]  # no temporaries left


def test_no_replace_publish_loses_a_race_cleanly(tmp_path):
    """Someone else creates the file while ours is being written: theirs stays."""
    path = tmp_path / "out.bin"

    def write(tmp):
        path.write_bytes(b"theirs")
        with open(tmp, "wb") as f:
            f.write(b"ours")

    with pytest.raises(FileExistsError):
        atomic.atomic_write(path, write, overwrite=False)
    assert path.read_bytes() == b"theirs" and os.listdir(tmp_path) == ["out.bin"]


def test_rename_noreplace_refuses_even_an_empty_folder(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    (tmp_path / "dst").mkdir()  # plain os.rename would replace this empty folder
    with pytest.raises(FileExistsError):
        atomic.rename_noreplace(tmp_path / "src", tmp_path / "dst")
    assert os.listdir(tmp_path / "dst") == []


def test_atomic_dir_swaps_an_existing_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("1")
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(out):
            pass
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(out, overwrite=True) as work:
            (open(os.path.join(work, "new"), "w")).close()
            raise RuntimeError("boom")
    assert os.listdir(out) == ["old"] and os.listdir(tmp_path) == ["out"]
    with atomic.atomic_dir(out, overwrite=True) as work:
        open(os.path.join(work, "new"), "w").close()
    assert os.listdir(out) == ["new"] and os.listdir(tmp_path) == ["out"]


def test_concurrent_version_claims_get_distinct_numbers(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "1").mkdir()
    results, barrier = [], threading.Barrier(8)

    def claim(i):
        tmp = atomic.temp_path(base / f"v{i}")
        os.mkdir(tmp)
        open(os.path.join(tmp, "id"), "w").write(str(i))
        barrier.wait()
        results.append(atomic.claim_next_version(tmp, base))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(os.path.basename(p) for p in results) == [str(n) for n in range(2, 10)]
    assert sorted(os.listdir(base), key=int) == [str(n) for n in range(1, 10)]


@pytest.mark.multiprocess
def test_stale_temps_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = atomic._host()
        dead, live = _dead_pid(), sleeper.pid
        live_start = atomic._start_time(live)
        names = {
            "dead_file": f".tmp-{host}~{dead}.~0badf00d-model.keras",
            "dead_dir": f".tmp-{host}~{dead}.123~0badf00d-backup",
            "live_file": f".tmp-{host}~{live}.{live_start}~0badf00d-model.keras",
            "reused_pid": f".tmp-{host}~{live}.1~0badf00d-x.png",  # same PID, older process
            "other_host": f".tmp-elsewhere~{dead}.~0badf00d-x.png",
            "legacy_dead": f".tmp-{dead}-model.keras",
            "legacy_live": f".tmp-{live}-model.keras",
            "legacy_partial": f"out.partial-{dead}",
            "user_file": "notes.tmp",
        }
        for key, name in names.items():
            if key.endswith("_dir") or key == "legacy_partial":
                os.mkdir(tmp_path / name)
                (tmp_path / name / "latest.weights.h5").write_text("x")
            else:
                (tmp_path / name).write_text("x")
        removed = {os.path.basename(p) for p in atomic.remove_stale_temps(tmp_path)}
        gone = {"dead_file", "dead_dir", "reused_pid", "legacy_dead", "legacy_partial"}
        assert removed == {names[k] for k in gone}
        assert set(os.listdir(tmp_path)) == {names[k] for k in names if k not in gone}
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.multiprocess
def test_first_write_in_a_folder_cleans_it(tmp_path):
    stale = tmp_path / f".tmp-{atomic._host()}~{_dead_pid()}.~0badf00d-a.png"
    stale.write_text("half")
    atomic._cleaned.discard(str(tmp_path))
    atomic.write_text(tmp_path / "b.txt", "x")
    assert sorted(os.listdir(tmp_path)) == ["b.txt"]


def test_check_outputs_names_the_paths(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_text("x")
    os.link(photo, tmp_path / "link.png")
    with pytest.raises(atomic.OutputError, match="would overwrite the input .*photo.png"):
        atomic.check_outputs([("out", photo)], [("image", str(photo))])
    with pytest.raises(atomic.OutputError, match="link.png.*would overwrite the input"):
        atomic.check_outputs([("out", tmp_path / "link.png")], [("image", str(photo))])
    with pytest.raises(atomic.OutputError, match="are the same output file"):
        atomic.check_outputs([("a", tmp_path / "x"), ("b", tmp_path / "." / "x")])
    with pytest.raises(atomic.OutputError, match="already exists; pass --overwrite"):
        atomic.check_outputs([("out", photo)])
    atomic.check_outputs([("out", photo)], overwrite=True)


def test_scratch_is_owned_and_removed_whether_published_or_not(tmp_path):
    target = tmp_path / "sub" / "out"
    with atomic.scratch(target) as tmp:
        assert os.path.isdir(tmp) and os.listdir(tmp) == []
        assert atomic.temp_owner(os.path.basename(tmp))[1] == os.getpid()
        (open(os.path.join(tmp, "f"), "w")).close()
    assert os.listdir(tmp_path / "sub") == []  # thrown away
    with atomic.scratch(target, "sm", mkdir=False) as tmp:
        assert not os.path.lexists(tmp) and tmp.endswith("-sm-out")
        os.mkdir(tmp)
        atomic.publish(tmp, target)
    assert os.listdir(tmp_path / "sub") == ["out"]  # published, nothing left over
    with pytest.raises(RuntimeError), atomic.scratch(target) as tmp:
        raise RuntimeError
    assert not os.path.lexists(tmp) and os.listdir(tmp_path / "sub") == ["out"]


def test_discard_renames_before_deleting(tmp_path, monkeypatch):
    folder = tmp_path / "backup"
    folder.mkdir()
    (folder / "w.h5").write_text("x")
    seen = []
    real_remove = atomic._remove
    monkeypatch.setattr(atomic, "_remove", lambda p: (seen.append(p), real_remove(p)))
    atomic.discard(folder)
    assert not folder.exists() and os.listdir(tmp_path) == []
    assert len(seen) == 1 and os.path.basename(seen[0]).startswith(atomic.TEMP_PREFIX)
    atomic.discard(folder)  # gone already: nothing to do
    (tmp_path / "f").write_text("x")
    atomic.discard(tmp_path / "f")
    assert os.listdir(tmp_path) == []
