"""`hms-train` and `hms-prep` as a script sees them, without their 3-5 s of imports each time: a server
process imports the CLIs' modules once (torch, timm, zarr, pyarrow...), then forks a child per call that
runs the installed entry point (pyproject's [project.scripts]) with the caller's arguments, working
directory, environment and standard streams, and hands back its exit status. Each call is still a
process of its own (its own globals, exit, crash); only the imports are shared (as tests/kill_hook/zygote.py
does for builds). tests/test_seed_chain.py puts commands of this kind on scripts/seed.sh's BIN.

    python tests/preloaded.py serve SOCKET                # the server (until killed)
    python -S tests/preloaded.py call SOCKET NAME ARGS... # one `NAME ARGS...`, as a process would run it
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

STATUS = struct.Struct("!i")


def _receive(connection: socket.socket) -> tuple[dict, list[int]]:
    data, fds = b"", []
    while not data.endswith(b"\n"):
        chunk, new_fds, _, _ = socket.recv_fds(connection, 1 << 20, 3)
        if not chunk:
            raise ConnectionError("the caller hung up before its request ended")
        data += chunk
        fds += new_fds
    return json.loads(data), fds


def _run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the caller's process, run the entry point, exit with its status."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # PYTHONPATH as the interpreter's start would read it (a plug-in folder: `PYTHONPATH=plugins hms-prep ...`)
        sys.path[1:1] = [os.path.abspath(p) for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.argv = [request["name"], *request["args"]]
        try:
            ENTRY_POINTS[request["name"]]()
            code = 0
        except SystemExit as done:
            if done.code is None or isinstance(done.code, int):
                code = done.code or 0
            else:
                print(done.code, file=sys.stderr)
        except BaseException:
            import traceback

            traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


ENTRY_POINTS = {}
NAMES = ("hms-train", "hms-prep")


def serve(path: str) -> None:
    from importlib.metadata import entry_points

    for name in NAMES:  # the installed console scripts, as .venv/bin/NAME runs them
        (script,) = entry_points(group="console_scripts", name=name)
        ENTRY_POINTS[name] = script.load()
    # What the commands import: loaded once here, without running anything (no threads before a fork).
    import hms_prep.building.run  # noqa: F401
    import hms_prep.building.task  # noqa: F401
    import hms_prep.kinds.mel  # noqa: F401
    import scipy.signal  # noqa: F401
    import torch  # noqa: F401
    import hms_train.cli  # noqa: F401
    import hms_train.run.blend  # noqa: F401
    import hms_train.run.compare  # noqa: F401
    import hms_train.run.predict  # noqa: F401
    import hms_train.run.train  # noqa: F401
    # What the commands import lazily at their end (curves.png, parquet datasets): 2-4 s per call otherwise.
    import hms_train.run.plots  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pydantic  # noqa: F401

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        connection, _ = listener.accept()
        with connection:
            request, fds = _receive(connection)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _run_child(request, fds)
            for fd in fds:
                os.close(fd)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            connection.sendall(STATUS.pack(128 - code if code < 0 else code))  # killed by a signal: 128 + N


def call(path: str, name: str, args: list[str]) -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(path)
        request = json.dumps({"name": name, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}).encode() + b"\n"
        socket.send_fds(connection, [request], [0, 1, 2])
        data = b""
        while len(data) < STATUS.size:
            chunk = connection.recv(STATUS.size - len(data))
            if not chunk:
                print(f"error: the preloaded {name} server went away", file=sys.stderr)
                return 1
            data += chunk
    return STATUS.unpack(data)[0]


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2])
    else:
        sys.exit(call(sys.argv[2], sys.argv[3], sys.argv[4:]))
