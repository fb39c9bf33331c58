"""Collection rules for the doctests in the package, and the session's temp folder.

Every temporary file of the run (pytest's ``tmp_path``, the doctests'
``tempfile.mkdtemp()``, subprocesses, Dask workers) goes into one folder made for
the session and removed at its end. The session then fails if anything new was
left in the real temp folder, or a daskmri file in ``/dev/shm`` (where local workers
share pixels): daskmri leaves nothing behind.
"""

import importlib.util
import os
import shutil
import tempfile
import time

# daskmri.torch needs the optional torch extra; without it its module cannot be imported.
collect_ignore = [] if importlib.util.find_spec("torch") else ["daskmri/torch.py"]

#: Where leftovers would show: the temp folder, and /dev/shm for daskmri's own files
#: (the slots local workers share pixels in). The pool's semaphores are checked after
#: the processes that made them have exited (tests/test_workers.py): loky's resource
#: tracker removes those of a worker that died only when the process that owns the
#: pool exits, which this one has not yet.
_SHM = "/dev/shm"
_TEMP_PREFIXES = ("daskmri", "dask-", "pytest-")
_SESSION_PREFIX = "daskmri-tests-"
_SHM_PREFIXES = ("daskmri",)


def _listing(folder: str) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def pytest_configure(config):
    real = tempfile.gettempdir()
    config._daskmri_temp = {
        "real": real,
        "before": _listing(real),
        "shm": _listing(_SHM),
        "session": tempfile.mkdtemp(prefix=_SESSION_PREFIX),
        "TMPDIR": os.environ.get("TMPDIR"),
    }
    # Subprocesses (scripts, dask workers, the notebook's kernel) inherit it too.
    os.environ["TMPDIR"] = tempfile.tempdir = config._daskmri_temp["session"]


def pytest_sessionfinish(session, exitstatus):
    state = getattr(session.config, "_daskmri_temp", None)
    if state is None:
        return
    # The suite's own pool of local workers (what a user's script would keep until
    # it exits): stopped, so that whatever else is left shows.
    import daskmri

    daskmri.shutdown_local_workers()
    # daskmri's own temporary folders are named daskmri-*: none may outlive the run,
    # in the session's folder (where the run's processes made theirs) or the real one.
    own = sorted(n for n in _listing(state["session"]) if n.startswith("daskmri"))
    shutil.rmtree(state["session"], ignore_errors=True)
    tempfile.tempdir = None
    if state["TMPDIR"] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = state["TMPDIR"]
    # In the real temp folder, only names that tests and Dask make: other programs on
    # the machine may write there meanwhile.
    # Another test session's own folder (daskmri-tests-*, removed by that session) is
    # not this run's leftover: two checkouts may run their suites at once.
    left = own + sorted(
        n
        for n in _listing(state["real"]) - state["before"]
        if n.startswith(_TEMP_PREFIXES) and not n.startswith(_SESSION_PREFIX)
    )
    shm = sorted(name for name in _listing(_SHM) - state["shm"] if name.startswith(_SHM_PREFIXES))
    if left or shm:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        ages = {n: round(time.time() - os.stat(os.path.join(_SHM, n)).st_mtime) for n in shm}
        message = f"left behind in {state['real']}: {left}; in {_SHM} (age s): {ages}"
        if reporter is not None:
            reporter.write_line(f"FAILED (leftovers) {message}", red=True)
        session.exitstatus = 1
