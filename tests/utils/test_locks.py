"""file_lock: one process at a time, and a killed holder never leaves a stale lock."""

import fcntl
import os
import subprocess
import sys
import textwrap

from panoptic_ext.utils.locks import file_lock
from tests.helpers.tools import REPO

# Exit 0 if the lock file in argv[1] can be taken right now, 1 if another process holds it.
_TRY = textwrap.dedent("""
    import fcntl, os, sys
    with open(os.path.join(sys.argv[1], ".lock"), "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.exit(1)
""")


def _can_lock_elsewhere(folder) -> bool:
    return subprocess.run([sys.executable, "-c", _TRY, str(folder)], timeout=60).returncode == 0


def test_lock_excludes_a_second_process(tmp_path):
    with file_lock(tmp_path):
        assert not _can_lock_elsewhere(tmp_path)
    assert _can_lock_elsewhere(tmp_path)  # released on exit
    assert os.listdir(tmp_path) == [".lock"]


def test_lock_is_released_on_error(tmp_path):
    try:
        with file_lock(tmp_path, name="x.lock"):
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    with open(tmp_path / "x.lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # would raise if still held


def test_waiting_process_runs_after_the_holder(tmp_path):
    child = textwrap.dedent("""
        import sys
        from panoptic_ext.utils.locks import file_lock
        print("waiting", flush=True)
        with file_lock(sys.argv[1]):
            print(open(sys.argv[1] + "/log").read(), flush=True)
    """)
    with file_lock(tmp_path):
        proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "waiting"
        (tmp_path / "log").write_text("holder finished")  # inside the lock, before release
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.strip() == "holder finished"


def test_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = textwrap.dedent("""
        import sys, time
        from panoptic_ext.utils.locks import file_lock
        with file_lock(sys.argv[1]):
            print("locked", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert not _can_lock_elsewhere(tmp_path)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    assert _can_lock_elsewhere(tmp_path)
