"""A pipeline's processes die with it, even when it is killed with SIGKILL (the OOM killer).

A killed process runs no cleanup, so its children live on: datatrove's multiprocess manager
and workers, Prefect's temporary API server (started by Prefect, not by us), accelerate's
training processes. A small watchdog process, started once per pipeline process, notes the
pipeline's descendants every POLL_SECONDS; when the pipeline is gone without saying goodbye
it sends them SIGTERM, then SIGKILL to what is left. A child started between two polls is
found too: by the process group, when the pipeline leads its own (a shell job), and by a
marker in the environment of every program the pipeline's processes start. A clean exit says goodbye (atexit), so
nothing is killed then. Linux only (it reads /proc); elsewhere it does nothing.
"""
from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0
GOODBYE = b"bye\n"
MARKER = "LLM_PIPELINE_LIFELINE"  # inherited by every program the pipeline starts (Prefect's server too)
_watchdog: subprocess.Popen | None = None


def ensure_watchdog() -> subprocess.Popen | None:
    """Start this process's watchdog (once); returns it, or None where /proc is absent."""
    global _watchdog
    if _watchdog is not None or not Path("/proc/self/stat").exists():
        return _watchdog
    os.environ[MARKER] = f"{os.getpid()}-{time.time_ns()}"
    _watchdog = subprocess.Popen([sys.executable, "-m", "components.lifeline", str(os.getpid()), os.environ[MARKER]],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
                                 cwd=Path(__file__).resolve().parents[1])  # the repo: importable from anywhere
    atexit.register(_say_goodbye, _watchdog)
    return _watchdog


def _say_goodbye(watchdog: subprocess.Popen) -> None:
    try:
        watchdog.stdin.write(GOODBYE)
        watchdog.stdin.close()
    except (BrokenPipeError, ValueError, OSError):
        pass


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a process, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    return int(fields[1]), int(fields[19])


def _group(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[2])


def stragglers(pipeline_pid: int, marker: str) -> dict[int, int]:
    """{pid: start time} of processes of a dead pipeline that no poll saw: its process group's (when it
    led one) and every process whose environment carries its marker."""
    needle, found = f"{MARKER}={marker}".encode(), {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or (stat := _stat(int(entry.name))) is None:
            continue
        try:
            marked = needle in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0")
        except OSError:
            marked = False
        if marked or _group(int(entry.name)) == pipeline_pid:
            found[int(entry.name)] = stat[1]
    return found


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every living descendant of `root` (start times guard against pid reuse)."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            children.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid not in found and pid in started:
            found[pid] = started[pid]
            todo += children.get(pid, [])
    return found


def _kill_all(known: dict[int, int]) -> None:
    """SIGTERM the known processes (and their own children by now), then SIGKILL the survivors."""
    for pid in list(known):
        known.update(descendants(pid))
    known.pop(os.getpid(), None)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in known.items():
            stat = _stat(pid)
            if stat is not None and stat[1] == start:  # the same process, not a reused pid
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + GRACE_SECONDS
        while time.monotonic() < deadline and any((_stat(p) or (0, -1))[1] == s for p, s in known.items()):
            time.sleep(0.1)


def watch(pipeline_pid: int, marker: str = "") -> None:
    """The watchdog's loop: runs until the pipeline ends, then kills its leftovers unless it said goodbye."""
    goodbye = threading.Event()

    def read_stdin() -> None:
        if sys.stdin.buffer.readline() == GOODBYE:
            goodbye.set()

    threading.Thread(target=read_stdin, daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the pipeline; we follow it out
    known: dict[int, int] = {}
    while os.getppid() == pipeline_pid and not goodbye.is_set():
        # a union, not the latest snapshot: a scan that starts just as the pipeline dies finds its
        # children already re-parented (to init), and must not forget them
        known = {pid: start for pid, start in known.items() if (_stat(pid) or (0, -1))[1] == start}
        known.update(descendants(pipeline_pid))
        known.pop(os.getpid(), None)
        time.sleep(POLL_SECONDS)
    time.sleep(0.2)  # a clean exit's goodbye may be in flight
    if not goodbye.is_set():
        known.update(stragglers(pipeline_pid, marker))
        known.pop(os.getpid(), None)
    if not goodbye.is_set() and known:
        print(f"lifeline: pipeline process {pipeline_pid} ended without cleanup; stopping its {len(known)} "
              f"leftover processes {sorted(known)}", file=sys.stderr, flush=True)
        _kill_all(known)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "")
