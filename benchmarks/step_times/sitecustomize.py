"""Loaded by a `hms-train train` process that benchmarks/full_scale.py starts (PYTHONPATH): appends, for
every training step, the wall clock (time.time()) when the step got its batch and when it finished, and the
process's CPU seconds at the step's start, as one line "START END CPU" of the file HMS_STEP_TIMES names, so the benchmark can tell the trainer's start to its
first batch and the steady samples/s. It only records; the run is unchanged."""

import os

if os.environ.get("HMS_STEP_TIMES"):
    import time

    import hms_train.run.step as step

    _call, _path = step.TrainStep.__call__, os.environ["HMS_STEP_TIMES"]

    def __call__(self, batch):
        started, cpu = time.time(), time.process_time()  # CPU: this process's, all threads, since it started
        loss = _call(self, batch)
        float(loss)  # the step's work is done (on a GPU this waits for it)
        with open(_path, "a") as f:
            f.write(f"{started} {time.time()} {cpu}\n")
        return loss

    step.TrainStep.__call__ = __call__
