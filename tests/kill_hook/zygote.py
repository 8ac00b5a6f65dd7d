"""Forks `hms-prep` commands on demand from one process that has imported everything a build needs, so
that a test can run dozens of builds killed at exact moments: a fresh interpreter spends 5-7 s of this
2-core machine importing torch and friends before the first write, a forked child none.

Protocol, one JSON object per line: a request on stdin {"argv": [...], "env": {...}, "out": PATH} (the
command's arguments, environment settings for it, the file its stdout and stderr go to), answered on
stdout with {"returncode": N} (negative: killed by signal -N). Each command runs in its own process group
(setsid), so the kill hook's killpg ends it and its Dask workers, never this process. Run with the kill
hook (tests/kill_hook) on PYTHONPATH and HMS_KILL_LOG set, so every child numbers its writes.
"""

import json
import os
import signal
import sys

# Everything a build imports, loaded once here.
import distributed  # noqa: F401
import scipy.signal  # noqa: F401
import torch  # noqa: F401

import hms_prep.store.audit  # noqa: F401
import hms_prep.building.run  # noqa: F401
import hms_prep.building.task  # noqa: F401
import hms_prep.cli
import hms_prep.kinds.mel  # noqa: F401
from hms_prep import doctor

# The compiled parts loaded and exercised once here (each child checks them again, as any build does, but
# their first-use costs are paid). On one thread, as in a Dask worker (OMP_NUM_THREADS=1): torch's OpenMP
# threads, once started, do not survive a fork, and a child would wait for them for ever.
torch.set_num_threads(1)
doctor.require(doctor.BUILD_PARTS)


def run(argv: list[str]) -> int:
    """The command's exit status, as the `hms-prep` script would return it."""
    try:
        hms_prep.cli.app(args=argv, prog_name="hms-prep")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            os.setsid()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal, whatever this inherited
            os.environ.update(request["env"])
            out = os.open(request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(out, 1)
            os.dup2(out, 2)
            code = run(request["argv"])
            # The interpreter's exit hooks run (distributed's among them: what they print is part of the
            # command's output), not its slow teardown of every module.
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
