"""One source of a row's labels in training (issue 25): the plan's targets and votes, looked up on the device
by each batch's rows (`RowLabels`); the reader's batches carry the rows, not labels of their own."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from hms_prep.domain import VOTE_COLUMNS
from hms_train.data.reader import StoreReader
from hms_train.data.sampler import SamplerState
from hms_train.run.config import load_config
from hms_train.run.forward import make_augmenter
from hms_train.run.plan import plan_run
from hms_train.run.step import RowLabels, TrainStep


def test_a_step_trains_on_the_plans_targets_and_votes_not_the_stores(train_store, tmp_path):
    """A teacher's targets (distillation) and David's table (each row's target, and so its votes, read from
    its spectrogram's most-voted line) make the plan's labels differ from the store's own: the step must
    return the plan's for every row of a batch."""
    reader = StoreReader(train_store, ["eeg_10s"], threads=1)
    teacher = tmp_path / "teacher.parquet"
    probs = np.random.default_rng(0).dirichlet(np.ones(len(VOTE_COLUMNS)), reader.n_rows).astype(np.float32)
    pq.write_table(pa.table({"label_id": reader.column("label_id"),
                             **{c: probs[:, j] for j, c in enumerate(VOTE_COLUMNS)}}), teacher)
    config = load_config(None, [f'store="{train_store}"', 'inputs=["eeg_10s"]', 'rows="david"', "folds=[0]",
                                "stage2_epochs=0", "batch_size=4", f'teacher_targets="{teacher}"',
                                'vote_weighting="linear"', "augment.mixup.p=0"])  # mixup would mix targets
    plan = plan_run(config, reader)
    (stage,) = plan.folds[0]
    step = TrainStep(plan, None, None, None, make_augmenter(plan, None), torch.device("cpu"),
                     RowLabels.of(stage.targets, plan.scope.target_votes, torch.device("cpu")))
    seen = []
    for batch in reader.batches(stage.rows, config.batch_size, SamplerState(seed=1), drop_last=True):
        assert set(batch) == {"eeg_10s", "row"}  # no labels of the reader's own
        rows = batch["row"].numpy()
        _, targets, votes = step.prepare(batch)
        np.testing.assert_array_equal(targets.numpy(), stage.targets[rows])
        np.testing.assert_array_equal(votes.numpy(), plan.scope.target_votes[rows].astype(np.float32))
        seen.append(rows)
    rows = np.concatenate(seen)
    # the test tells the sources apart: the store's own labels differ from the plan's on these rows
    assert not np.allclose(stage.targets[rows], reader.targets[rows])
    assert (plan.scope.target_votes[rows] != reader.votes[rows]).any()
