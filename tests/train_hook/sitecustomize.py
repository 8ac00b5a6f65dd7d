"""Loaded by a training process under test (PYTHONPATH): right after the checkpoint save numbered
HMS_KILL_AFTER_MID_SAVE among the saves made inside an epoch (a fold{k}_last.pt whose position has
batch > 0), SIGKILL the whole process group, as a power cut there would (HMS_KILL_SIGNAL=INT: SIGINT, as
Ctrl-C in its terminal would). Used by tests/test_resume.py."""

import os
import signal

if os.environ.get("HMS_KILL_AFTER_MID_SAVE"):
    import hms_train.run.checkpoint as checkpoint

    AFTER, _save, _count = int(os.environ["HMS_KILL_AFTER_MID_SAVE"]), checkpoint.save, [0]

    def save(path, state, *args):
        _save(path, state, *args)
        if path.name.endswith("_last.pt") and state.get("position", {}).get("batch", 0) > 0:
            _count[0] += 1
            if _count[0] == AFTER:
                os.killpg(os.getpgid(0), getattr(signal, "SIG" + os.environ.get("HMS_KILL_SIGNAL", "KILL")))

    checkpoint.save = save
