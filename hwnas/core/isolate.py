"""Run a function in a fresh (spawned) Python process and return its result.

Timings depend on the history of the process that takes them: on the 2-core build machine, latency
pieces timed by the process that had just trained the supernet ran 25-35% slower than the same
pieces timed by a fresh process (glibc heap and caches left by training; 40 training steps were
enough for ~10%). So `hwnas run` runs every stage in its own process, and the search re-measures
its front members in one.

The child dies with its parent (Linux `PR_SET_PDEATHSIG`, see `die_with_parent`): a killed `hwnas
run` leaves no stage running on behind it. An exception in the child is raised again in the parent:
the same exception when it pickles, else a `HwnasError` (for hwnas errors: the same one-line
message) or a `RuntimeError` carrying the child's traceback.

    value = run_isolated(fn, *args)                  # one child, waited for
    children = [Isolated(fn, a) for a in work]       # several at once (the search's Optuna workers)
    values = wait_all(children)
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import sys
import traceback
import warnings
from collections.abc import Callable
from typing import Any

from .errors import HwnasError, warning_line


def die_with_parent(parent: int) -> None:
    """Make this process die (SIGKILL) when `parent`, the process that started it, dies; exit at
    once if it is already gone. Call it first thing in a child, with the pid the parent passed.

    Linux only (`PR_SET_PDEATHSIG`; elsewhere a no-op). The signal comes when the parent *thread*
    that started the child exits, so children are started from the main thread."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux glibc: the child may outlive a killed parent
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _child(conn, parent: int, fn: Callable[..., Any], args: tuple, kwargs: dict, formatwarning=None) -> None:
    die_with_parent(parent)
    if formatwarning is not None:  # warnings look as they do in the parent (the CLI's one line each)
        warnings.formatwarning = formatwarning
    try:
        result = ("ok", fn(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001  (everything goes back to the parent)
        result = ("error", _portable(exc))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        conn.send(result)
    finally:
        conn.close()


def _portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else an equivalent that does."""
    try:
        back = pickle.loads(pickle.dumps(exc))
        if type(back) is type(exc) and str(back) == str(exc):
            return exc
    except Exception:  # noqa: BLE001
        pass
    if isinstance(exc, HwnasError):
        return HwnasError(str(exc))
    if isinstance(exc, KeyboardInterrupt):
        return KeyboardInterrupt()
    return RuntimeError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")


class Isolated:
    """`fn(*args, **kwargs)` running in a spawned process that dies with this one (fn, args and
    result must pickle). Start it from the main thread (see `die_with_parent`)."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any):
        for stream in (sys.stdout, sys.stderr):  # the child writes to the same streams: keep the order
            stream.flush()
        ctx = mp.get_context("spawn")
        self.name = getattr(fn, "__name__", str(fn))
        self._recv, send = ctx.Pipe(duplex=False)
        shown = warnings.formatwarning if warnings.formatwarning is warning_line else None
        self.process = ctx.Process(target=_child, args=(send, os.getpid(), fn, args, kwargs, shown), daemon=False)
        self.process.start()
        send.close()

    @property
    def sentinel(self) -> int:
        """Ready (for `multiprocessing.connection.wait`) when the child has sent its result or died."""
        return self._recv.fileno()

    def result(self) -> Any:
        """Wait for the child; its return value, or its exception raised here."""
        try:
            status, value = self._recv.recv()
        except EOFError:
            self.process.join()
            raise RuntimeError(f"the isolated process running {self.name} died (exit code {self.process.exitcode})") from None
        finally:
            self._recv.close()
        self.process.join()
        if status == "error":
            raise value
        return value

    def stop(self, grace: float = 10) -> None:
        """If the child still runs, give it `grace` seconds (a Ctrl-C reaches it too), then kill it."""
        if self.process.is_alive():
            self.process.join(timeout=grace)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self._recv.close()


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a spawned process (fn, args and result must pickle)."""
    return wait_all([Isolated(fn, *args, **kwargs)])[0]


def wait_all(children: list[Isolated], grace: float = 10, poll: Callable[[], None] | None = None,
             every: float = 0.5) -> list[Any]:
    """The results of `children`, in order. The first error (raised by a child, or a child that
    died) kills the others and is raised here. On Ctrl-C (which reaches the children too) they get
    `grace` seconds to stop cleanly first. `poll()`, if given, is called every `every` seconds while
    they run (a progress bar)."""
    results: dict[int, Any] = {}
    try:
        while len(results) < len(children):
            pending = {c.sentinel: i for i, c in enumerate(children) if i not in results}
            for ready in mp_connection.wait(list(pending), timeout=every if poll else None):
                results[pending[ready]] = children[pending[ready]].result()
            if poll:
                poll()
    except BaseException as exc:
        for child in children:
            child.stop(grace if isinstance(exc, KeyboardInterrupt) else 0)
        raise
    return [results[i] for i in range(len(children))]
