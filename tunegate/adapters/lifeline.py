"""Child processes that end with the process that started them, however it ends (``kill -9`` included).

``tunegate run`` starts a temporary Prefect server and a preflight/validation child; a run killed
while training (the crash ``--resume`` exists for) runs no atexit handler, and its children used to
live on, reparented to init. :func:`spawn` starts a child with the parent-death signal set (Linux
``prctl(PR_SET_PDEATHSIG, SIGKILL)``, set between fork and exec): the kernel kills the child the moment
its parent dies. The kernel ties that signal to the *thread* that forked the child, not the process,
so every child is forked on one thread kept for the life of the process ("tunegate-lifeline"); a child
started on a short-lived thread (the server's start-up thread) would otherwise be killed when that
thread ends. Where prctl does not exist (macOS) children are plain subprocesses, stopped by the
atexit handlers of whoever started them.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _death_signal_setter() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child die with this process, or ``None`` where the OS cannot."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork, not in the child
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl: nobody would send the signal
            os._exit(1)

    return die_with_parent


class _Forker:
    """The one thread that forks every child, alive as long as the process (it waits on its queue)."""

    def __init__(self) -> None:
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="tunegate-lifeline", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            args, kwargs, answer = self.requests.get()
            try:
                answer.put(subprocess.Popen(args, preexec_fn=_death_signal_setter(), **kwargs))
            except BaseException as error:  # re-raised by spawn() on the asking thread
                answer.put(error)

    def spawn(self, args: list[str], kwargs: dict[str, Any]) -> subprocess.Popen:
        answer: queue.SimpleQueue = queue.SimpleQueue()
        self.requests.put((args, kwargs, answer))
        got = answer.get()
        if isinstance(got, BaseException):
            raise got
        return got


_forker: _Forker | None = None  # this process's forking thread, started on the first spawn
_forker_lock = threading.Lock()


def spawn(args: list[str], **popen_kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen_kwargs)`` whose process is killed when this one dies."""
    global _forker
    if _death_signal_setter() is None:
        return subprocess.Popen(args, **popen_kwargs)
    with _forker_lock:
        if _forker is None or not _forker.thread.is_alive():
            _forker = _Forker()
    return _forker.spawn(args, popen_kwargs)
