"""Run a function in a fresh (spawned) Python process and return its result.

Timings depend on the history of the process that takes them: on the 2-core build machine, latency
pieces timed by the process that had just trained the supernet ran 25-35% slower than the same
pieces timed by a fresh process (glibc heap and caches left by training; 40 training steps were
enough for ~10%). So `hwnas run` runs every stage in its own process, and the search re-measures
its front members in one.

The child dies with its parent (Linux `PR_SET_PDEATHSIG`): a killed `hwnas run` leaves no stage
running on behind it. An exception in the child is raised again in the parent: the same exception
when it pickles, else a `HwnasError` (for hwnas errors: the same one-line message) or a
`RuntimeError` carrying the child's traceback.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .errors import HwnasError


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux glibc: the child may outlive a killed parent
        return
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _child(conn, parent: int, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    _die_with_parent(parent)
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


def run_isolated(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn(*args, **kwargs)` in a spawned process (fn, args and result must pickle)."""
    for stream in (sys.stdout, sys.stderr):  # the child writes to the same streams: keep the order
        stream.flush()
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(send, os.getpid(), fn, args, kwargs), daemon=False)
    proc.start()
    send.close()
    try:
        try:
            status, value = recv.recv()
        except EOFError:
            proc.join()
            raise RuntimeError(f"the isolated process running {getattr(fn, '__name__', fn)} died "
                               f"(exit code {proc.exitcode})") from None
        proc.join()
    except BaseException:
        if proc.is_alive():  # Ctrl-C reached both; give the child a moment to stop cleanly
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        raise
    finally:
        recv.close()
    if status == "error":
        raise value
    return value
