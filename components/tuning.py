"""Head tuning: a small grid of learning rate x epochs x dropout, judged on the validation split.

Tuning trains only the head (Dropout + Dense) on stored backbone features, so each trial costs
seconds. Trials that differ only in epochs share one run. With a constant learning rate and the
same per-epoch shuffle, the first 5 epochs of a 20-epoch run are exactly a 5-epoch run, so the
run's validation metrics after epochs 5, 10 and 20 are those of three trials.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time

from components import classifier, features
from components.train_options import TrainOptions

logger = logging.getLogger(__name__)

LEARNING_RATES = (0.001, 0.005, 0.01, 0.05)
EPOCH_COUNTS = (5, 10, 20)
DROPOUT_RATES = (0.0, 0.2, 0.5)


@dataclasses.dataclass(frozen=True)
class TuningTrial:
    """One point of the grid and how the head trained with it did on the validation split."""

    learning_rate: float
    epochs: int
    dropout_rate: float
    val_accuracy: float
    val_loss: float
    seconds: float  # training time from the run's start to this trial's last epoch


def tune_head(
    train_set: features.FeatureSet,
    validation_set: features.FeatureSet,
    *,
    options: TrainOptions,
) -> list[TuningTrial]:
    """Train a head for every grid point; returns the trials in grid order.

    Every head starts from the same seeded weights; options give the other hyperparameters.
    """
    num_classes = train_set.onehot_labels.shape[1]
    feature_dim = train_set.features.shape[1]
    trials = []
    for learning_rate, dropout_rate in itertools.product(LEARNING_RATES, DROPOUT_RATES):
        trial_options = dataclasses.replace(options, learning_rate=learning_rate, dropout_rate=dropout_rate)
        head = classifier.build_head(num_classes, feature_dim=feature_dim, options=trial_options)
        started = time.perf_counter()
        seconds_after_epoch: list[float] = []
        history = features.fit_head(
            head,
            train_set,
            validation_set,
            epochs=max(EPOCH_COUNTS),
            batch_size=options.batch_size,
            seed=options.seed,
            on_epoch_end=lambda epoch: seconds_after_epoch.append(time.perf_counter() - started),
        )
        for epochs in EPOCH_COUNTS:
            trial = TuningTrial(
                learning_rate=learning_rate,
                epochs=epochs,
                dropout_rate=dropout_rate,
                val_accuracy=history["val_accuracy"][epochs - 1],
                val_loss=history["val_loss"][epochs - 1],
                seconds=seconds_after_epoch[epochs - 1],
            )
            logger.info("tuning trial %s", trial)
            trials.append(trial)
    return sorted(trials, key=_grid_position)


def best_trial(trials: list[TuningTrial]) -> TuningTrial:
    """Pick the highest validation accuracy; ties go to the lower validation loss, then grid order."""
    if not trials:
        raise ValueError("no tuning trials to choose from: the grid is empty")
    return min(trials, key=lambda trial: (-trial.val_accuracy, trial.val_loss, _grid_position(trial)))


def _grid_position(trial: TuningTrial) -> tuple[int, int, int]:
    return (
        LEARNING_RATES.index(trial.learning_rate),
        EPOCH_COUNTS.index(trial.epochs),
        DROPOUT_RATES.index(trial.dropout_rate),
    )
