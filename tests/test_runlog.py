"""Other libraries' log lines and warnings during training go to RUN/log.txt, not the console: here timm's
warnings (a deprecated model name, a scheduler that cannot anneal) from a real one-batch run; mlflow's INFO
lines in test_tracking.py, which makes a new tracking database anyway."""

import pytest

from hms_train.run.config import load_config
from hms_train.run.train import train

pytestmark = pytest.mark.slow
TINY = ["epochs=1", "stage2_epochs=0", "folds=[0]", "max_batches_per_epoch=1", "batch_size=4", 'device="cpu"',
        'model.backbone="mobilenetv3_large_100_miil"']  # a name timm maps, with a UserWarning


def test_third_party_lines_go_to_the_run_log_not_the_console(train_store, tmp_path, capfd):
    run = tmp_path / "run"
    train(load_config("smoke", [f'store="{train_store}"', *TINY]), run, quiet=True)
    console = capfd.readouterr()
    log = (run / "log.txt").read_text()
    assert "UserWarning: Mapping deprecated model name mobilenetv3_large_100_miil" in log, log
    assert "WARNING timm.scheduler.cosine_lr: Cosine annealing scheduler will have no effect" in log, log
    assert "timm" not in console.err + console.out, console.err
    assert " INFO progress: fold 0 " in log and " epoch 1: loss " in log, log  # the run's own lines too
