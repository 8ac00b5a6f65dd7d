"""One builder at a time: the build lock of a store, `STORE/build.lock`.

Local stores (and any path on a mounted filesystem): an exclusive `fcntl.flock` on the lock file, held
for the whole build. The kernel drops it when the process dies, however it dies (kill -9, power loss
ends the process too), so a killed build never leaves the store locked. The file's text says who holds
it (pid, host, start time), for the refusal message only.

Other fsspec stores (s3://, gs://, ...): no shared lock primitive, so the file itself is the lock,
written with the same text and removed at the end. A lock left by a killed build on this host is stale
when its pid is gone and is taken over; one from another host is refused with its holder named (delete
it by hand once that build is known dead). Object stores make this best-effort: two builds starting in
the same instant may both pass. In-process stores (memory://) need no lock across processes.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import fsspec

LOCK_FILE = "build.lock"


class StoreLocked(RuntimeError):
    """Another build holds the store's lock."""


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}


def _describe(url: str, text: str) -> str:
    try:
        held = json.loads(text)
        who = f"pid {held['pid']} on {held['host']}, started {held['started']}"
    except (ValueError, KeyError, TypeError):
        who = "an unknown process"
    return f"{url}: another build is running on this store ({who}); wait for it to finish, or stop it"


def is_local(url: str) -> bool:
    return "://" not in url


@contextmanager
def build_lock(url: str):
    """Hold the store's build lock for the block; StoreLocked names the holder when it is taken."""
    if url.startswith("memory://"):
        yield
        return
    if is_local(url):
        with _flock(url):
            yield
        return
    with _lock_object(url):
        yield


@contextmanager
def _flock(url: str):
    import fcntl

    path = Path(url) / LOCK_FILE
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise StoreLocked(_describe(url, f.read())) from None
        f.seek(0)
        f.truncate()
        f.write(json.dumps(_holder()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)  # the file stays: removing a flock file races with a new locker


@contextmanager
def _lock_object(url: str):
    fs, root = fsspec.core.url_to_fs(url)
    path = f"{root.rstrip('/')}/{LOCK_FILE}"
    if fs.exists(path):
        text = fs.cat_file(path).decode(errors="replace")
        if not _stale(text):
            raise StoreLocked(_describe(url, text) + f"; if no build runs there, delete {url}/{LOCK_FILE}")
    fs.pipe_file(path, json.dumps(_holder()).encode())
    try:
        yield
    finally:
        fs.rm_file(path)


def _stale(text: str) -> bool:
    """A lock of this host whose process is gone (a killed build)."""
    try:
        held = json.loads(text)
        if held["host"] != socket.gethostname():
            return False
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, KeyError, TypeError, PermissionError):
        return False
    return False
