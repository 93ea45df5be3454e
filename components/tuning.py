"""Head tuning: a hyperparameter grid judged by stratified k-fold cross-validation, then one final head.

Tuning trains only the head (Dropout + Dense) on stored backbone features. Each grid point is
judged on the train and validation features together, split into NUM_FOLDS stratified folds:
every photo is held out exactly once, so each decision rests on all train + validation photos
instead of the validation split alone. The test split is never read. The grid point with the
highest cross-validated accuracy wins, ties going to the lower cross-validated loss, and the
final head is then trained with it on train + validation together.

Speed: all heads of all folds train at once as one batch of heads, in one tf.function loop over
every step of every epoch, because a Keras fit call per epoch and per head costs more than the
arithmetic. Trials that differ only in epochs share one run: with a constant learning rate and
the same per-epoch shuffle, the first 5 epochs of a 20-epoch run are exactly a 5-epoch run.
Each step follows Model Maker's recipe as Keras runs it: inverted dropout on the features, a
softmax Dense layer, label-smoothed cross-entropy averaged over the batch plus the L2 penalty,
and SGD with momentum at a constant learning rate.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
import numpy as np
import tensorflow as tf
import tf_keras

from components import features
from components.train_options import TrainOptions

logger = logging.getLogger(__name__)

# The grid: 4 x 3 x 3 x 2 x 2 = 144 trials, and Model Maker's defaults (0.005, 5, 0.2, 1e-4, 0.1)
# are one of them. The learning rates span SGD with momentum 0.9 from too slow to unstable for a
# linear head on these features within 5 to 20 epochs. A 100x stronger L2 penalty and no label
# smoothing are the regularization changes a linear head on fixed features responds to. Each of
# the two adds only one value, because every value multiplies the number of heads trained at once.
LEARNING_RATES = (0.001, 0.005, 0.01, 0.05)
EPOCH_COUNTS = (5, 10, 20)
DROPOUT_RATES = (0.0, 0.2, 0.5)
L2_REGULARIZATIONS = (0.0001, 0.01)
LABEL_SMOOTHINGS = (0.0, 0.1)
NUM_FOLDS = 5


@dataclasses.dataclass(frozen=True)
class TuningTrial:
    """One grid point and its cross-validated scores over the train and validation photos."""

    learning_rate: float
    epochs: int
    dropout_rate: float
    l2_regularization: float
    label_smoothing: float
    cv_accuracy: float  # held-out accuracy pooled over all folds
    cv_loss: float  # held-out cross-entropy pooled over all folds, without smoothing or L2 term


@dataclasses.dataclass
class HeadFit:
    """Weights and per-epoch history of the final head."""

    kernel: np.ndarray  # [feature_dim, num_classes]
    bias: np.ndarray  # [num_classes]
    history: dict[str, list[float]]  # features.HISTORY_KEYS, one value per epoch


@dataclasses.dataclass
class TuningResult:
    """The trials, the chosen options and the final head trained with them on train + validation."""

    trials: list[TuningTrial]  # grid order
    options: TrainOptions  # the input options with the best trial's hyperparameters
    head: HeadFit  # val_loss and val_accuracy in its history are the best trial's cross-validation
    cv_seconds: float
    final_fit_seconds: float


@dataclasses.dataclass
class _HeadGroups:
    """The heads of one batched run: groups x dropout rates x (learning rate, L2, smoothing)."""

    dropout_rates: tuple[float, ...]
    learning_rates: tuple[float, ...]
    l2_regularizations: tuple[float, ...]
    label_smoothings: tuple[float, ...]


@dataclasses.dataclass
class _RunTotals:
    """Final weights and per-epoch sums of a batched run, the sums shaped [epochs, groups, dropout rates, others]."""

    kernel: np.ndarray  # [groups, dropout rates, others, feature_dim, num_classes]
    bias: np.ndarray  # [groups, dropout rates, others, num_classes]
    train_loss_sum: np.ndarray  # batch loss (L2 term included) times batch size
    train_correct: np.ndarray
    train_count: np.ndarray  # [groups]: training rows per epoch
    heldout_loss_sum: np.ndarray
    heldout_correct: np.ndarray


def tune_head(
    train_set: features.FeatureSet,
    validation_set: features.FeatureSet,
    *,
    options: TrainOptions,
) -> TuningResult:
    """Choose head hyperparameters by cross-validation, then train the final head on train + validation.

    The returned head's history has the final head's training loss and accuracy per epoch, and
    as val_loss and val_accuracy the chosen grid point's cross-validated scores per epoch.
    """
    # NOTE: tuning copies all train and validation features into RAM, also when they were
    # spilled to disk because they exceed options.feature_memory_bytes.
    combined = np.concatenate([np.asarray(train_set.features), np.asarray(validation_set.features)])
    onehot_labels = np.concatenate([train_set.onehot_labels, validation_set.onehot_labels])

    started = time.perf_counter()
    trials, curves = cross_validate(combined, onehot_labels, options=options)
    best = best_trial(trials)
    cv_seconds = time.perf_counter() - started
    logger.info("head tuning chose %s out of %s trials in %.1f s", best, len(trials), cv_seconds)

    chosen = dataclasses.replace(
        options, learning_rate=best.learning_rate, epochs=best.epochs, dropout_rate=best.dropout_rate,
        l2_regularization=best.l2_regularization, label_smoothing=best.label_smoothing,
    )
    started = time.perf_counter()
    head = fit_final_head(combined, onehot_labels, options=chosen)
    accuracy_curve, loss_curve = curves[_trial_key(best)]
    head.history["val_accuracy"] = accuracy_curve[:best.epochs]
    head.history["val_loss"] = loss_curve[:best.epochs]
    return TuningResult(
        trials=trials, options=chosen, head=head,
        cv_seconds=cv_seconds, final_fit_seconds=time.perf_counter() - started,
    )


def stratified_folds(onehot_labels: np.ndarray, *, num_folds: int, seed: int) -> np.ndarray:
    """Assign every row to one of num_folds folds, spreading each class evenly, and return the fold ids.

    Rows of each class are shuffled with the seed and dealt out in turn, continuing the turn
    from the previous class, so fold sizes differ by at most one and so do per-class counts.
    """
    num_rows = len(onehot_labels)
    if not 2 <= num_folds <= num_rows:
        raise ValueError(
            f"num_folds={num_folds} is invalid for {num_rows} photos: expected 2 <= num_folds <= "
            "the number of photos; add photos or use fewer folds"
        )
    class_ids = np.argmax(onehot_labels, axis=1)
    rng = np.random.default_rng(seed)
    fold_ids = np.empty(num_rows, dtype=np.int64)
    next_fold = 0
    for class_id in np.unique(class_ids):
        rows = rng.permutation(np.flatnonzero(class_ids == class_id))
        fold_ids[rows] = (next_fold + np.arange(len(rows))) % num_folds
        next_fold = (next_fold + len(rows)) % num_folds
    return fold_ids


def fold_rows(
    onehot_labels: np.ndarray, *, num_folds: int, seed: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Return the training rows and the held-out rows of each stratified fold, in fold order."""
    fold_ids = stratified_folds(onehot_labels, num_folds=num_folds, seed=seed)
    folds = range(num_folds)
    return ([np.flatnonzero(fold_ids != fold) for fold in folds],
            [np.flatnonzero(fold_ids == fold) for fold in folds])


def cross_validate(
    features_array: np.ndarray, onehot_labels: np.ndarray, *, options: TrainOptions
) -> tuple[list[TuningTrial], dict[tuple, tuple[list[float], list[float]]]]:
    """Score every grid point by stratified k-fold cross-validation over the given rows.

    Returns the trials in grid order and, per grid point without its epochs, the pooled held-out
    accuracy and loss after every epoch up to max(EPOCH_COUNTS).
    """
    train_rows, heldout_rows = fold_rows(onehot_labels, num_folds=NUM_FOLDS, seed=options.seed)
    groups = _HeadGroups(DROPOUT_RATES, *zip(*itertools.product(
        LEARNING_RATES, L2_REGULARIZATIONS, LABEL_SMOOTHINGS)))
    totals = train_head_groups(
        features_array, onehot_labels,
        train_rows=train_rows, heldout_rows=heldout_rows,
        groups=groups, epochs=max(EPOCH_COUNTS), options=options,
    )
    # Pooling over folds weights every held-out photo equally, also when fold sizes differ by one.
    accuracy = totals.heldout_correct.astype(np.float64).sum(axis=1) / len(onehot_labels)
    loss = totals.heldout_loss_sum.astype(np.float64).sum(axis=1) / len(onehot_labels)
    curves = {}
    for dropout_index, dropout_rate in enumerate(groups.dropout_rates):
        for other_index, other in enumerate(zip(groups.learning_rates, groups.l2_regularizations,
                                                groups.label_smoothings)):
            key = (other[0], dropout_rate, other[1], other[2])
            curves[key] = (accuracy[:, dropout_index, other_index].tolist(),
                           loss[:, dropout_index, other_index].tolist())
    trials = []
    grid = itertools.product(LEARNING_RATES, EPOCH_COUNTS, DROPOUT_RATES, L2_REGULARIZATIONS, LABEL_SMOOTHINGS)
    for learning_rate, epochs, dropout_rate, l2, smoothing in grid:
        accuracy_curve, loss_curve = curves[(learning_rate, dropout_rate, l2, smoothing)]
        trials.append(TuningTrial(learning_rate, epochs, dropout_rate, l2, smoothing,
                                  cv_accuracy=accuracy_curve[epochs - 1], cv_loss=loss_curve[epochs - 1]))
    return trials, curves


def best_trial(trials: list[TuningTrial]) -> TuningTrial:
    """Pick the highest cross-validated accuracy; ties go to the lower cross-validated loss, then grid order."""
    if not trials:
        raise ValueError("no tuning trials to choose from: the grid is empty")
    return min(enumerate(trials), key=lambda item: (-item[1].cv_accuracy, item[1].cv_loss, item[0]))[1]


def fit_final_head(features_array: np.ndarray, onehot_labels: np.ndarray, *, options: TrainOptions) -> HeadFit:
    """Train one head on all given rows with the options' hyperparameters; no rows are held out.

    The history's val_loss and val_accuracy are NaN, because nothing is held out.
    """
    groups = _HeadGroups((options.dropout_rate,), (options.learning_rate,),
                         (options.l2_regularization,), (options.label_smoothing,))
    totals = train_head_groups(
        features_array, onehot_labels, train_rows=[np.arange(len(onehot_labels))],
        heldout_rows=[np.arange(0)], groups=groups, epochs=options.epochs, options=options,
    )
    count = totals.train_count[0]
    nan = [float("nan")] * options.epochs
    history = {
        "loss": (totals.train_loss_sum[:, 0, 0, 0] / count).tolist(),
        "accuracy": (totals.train_correct[:, 0, 0, 0] / count).tolist(),
        "val_loss": nan, "val_accuracy": list(nan),
    }
    return HeadFit(kernel=totals.kernel[0, 0, 0], bias=totals.bias[0, 0, 0], history=history)


def train_head_groups(
    features_array: np.ndarray,
    onehot_labels: np.ndarray,
    *,
    train_rows: list[np.ndarray],
    heldout_rows: list[np.ndarray],
    groups: _HeadGroups,
    epochs: int,
    options: TrainOptions,
) -> _RunTotals:
    """Train a batch of heads at once and sum their per-epoch training and held-out scores.

    There is one head per (group, dropout rate, other hyperparameters). Group g trains on the
    rows train_rows[g], shuffled per epoch with features.epoch_order, and is scored after every
    epoch on heldout_rows[g]. Every head starts from the Glorot-uniform kernel of options.seed
    and a zero bias, as the Dense layer of classifier.build_head_layers does.
    """
    num_classes = onehot_labels.shape[1]
    batch_rows, batch_weights = _batch_plan(
        train_rows, epochs=epochs, batch_size=options.batch_size, seed=options.seed)
    heldout_index, heldout_weights = _pad_rows(heldout_rows)
    initial_kernel = tf_keras.initializers.GlorotUniform(seed=options.seed)(
        shape=(features_array.shape[1], num_classes), dtype=tf.float32)
    outputs = _train_heads(
        tf.constant(features_array, tf.float32), tf.constant(onehot_labels, tf.float32),
        tf.constant(batch_rows), tf.constant(batch_weights),
        tf.constant(heldout_index), tf.constant(heldout_weights),
        dropout_rates=tf.constant(groups.dropout_rates, tf.float32),
        learning_rates=tf.constant(groups.learning_rates, tf.float32),
        l2_regularizations=tf.constant(groups.l2_regularizations, tf.float32),
        label_smoothings=tf.constant(groups.label_smoothings, tf.float32),
        initial_kernel=initial_kernel, momentum=tf.constant(options.momentum, tf.float32),
        seed=tf.constant(options.seed, tf.int64),
    )
    kernel, bias, train_loss_sum, train_correct, heldout_loss_sum, heldout_correct = (
        output.numpy() for output in outputs)
    return _RunTotals(
        kernel=kernel, bias=bias, train_loss_sum=train_loss_sum, train_correct=train_correct,
        train_count=np.array([len(rows) for rows in train_rows], dtype=np.float64),
        heldout_loss_sum=heldout_loss_sum, heldout_correct=heldout_correct,
    )


def _batch_plan(
    train_rows: list[np.ndarray], *, epochs: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lay out every batch of every epoch and group: rows and 0/1 weights, [epochs, steps, groups, batch].

    A group with fewer rows gets padding (weight 0) in its last batches, and a step with no
    real row leaves its heads unchanged, so each group trains as if it ran alone.
    """
    steps = max(math.ceil(len(rows) / batch_size) for rows in train_rows)
    rows_plan = np.zeros((epochs, len(train_rows), steps * batch_size), dtype=np.int32)
    weights_plan = np.zeros(rows_plan.shape, dtype=np.float32)
    for epoch in range(epochs):
        for group, rows in enumerate(train_rows):
            rows_plan[epoch, group, :len(rows)] = rows[features.epoch_order(len(rows), seed=seed, epoch=epoch)]
            weights_plan[epoch, group, :len(rows)] = 1.0
    shape = (epochs, len(train_rows), steps, batch_size)
    return (rows_plan.reshape(shape).transpose(0, 2, 1, 3),
            weights_plan.reshape(shape).transpose(0, 2, 1, 3))


def _pad_rows(row_lists: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(rows) for rows in row_lists)
    index = np.zeros((len(row_lists), width), dtype=np.int32)
    weights = np.zeros((len(row_lists), width), dtype=np.float32)
    for group, rows in enumerate(row_lists):
        index[group, :len(rows)] = rows
        weights[group, :len(rows)] = 1.0
    return index, weights


def _trial_key(trial: TuningTrial) -> tuple[float, float, float, float]:
    return (trial.learning_rate, trial.dropout_rate, trial.l2_regularization, trial.label_smoothing)


@tf.function(reduce_retracing=True)
def _train_heads(
    features_tensor, onehot_labels, batch_rows, batch_weights, heldout_index, heldout_weights, *,
    dropout_rates, learning_rates, l2_regularizations, label_smoothings, initial_kernel, momentum, seed,
):
    """Run every step of every epoch for all heads; shapes as in _RunTotals, sums per epoch."""
    num_epochs, num_steps, num_groups = tf.unstack(tf.shape(batch_rows)[:3])
    num_dropouts, num_others = tf.shape(dropout_rates)[0], tf.shape(learning_rates)[0]
    head_shape = tf.stack([num_groups, num_dropouts, num_others])
    kernel = tf.tile(initial_kernel[None, None, None], tf.concat([head_shape, [1, 1]], axis=0))
    bias = tf.zeros(tf.concat([head_shape, tf.shape(onehot_labels)[1:]], axis=0))
    kernel_velocity, bias_velocity = tf.zeros_like(kernel), tf.zeros_like(bias)
    hyperparameters = (dropout_rates, learning_rates, l2_regularizations, label_smoothings, momentum)
    train_losses = tf.TensorArray(tf.float32, size=num_epochs)
    train_corrects = tf.TensorArray(tf.float32, size=num_epochs)
    heldout_losses = tf.TensorArray(tf.float32, size=num_epochs)
    heldout_corrects = tf.TensorArray(tf.float32, size=num_epochs)

    for epoch in tf.range(num_epochs):
        train_loss_sum, train_correct = tf.zeros(head_shape), tf.zeros(head_shape)
        for step in tf.range(num_steps):
            # The step's seed ignores the step count, which depends on the largest group.
            step_seed = tf.stack([seed, tf.cast(epoch, tf.int64) * 2**32 + tf.cast(step, tf.int64)])
            state = (kernel, bias, kernel_velocity, bias_velocity)
            state, batch_loss_sum, batch_correct = _train_step(
                features_tensor, onehot_labels, batch_rows[epoch, step], batch_weights[epoch, step],
                state, hyperparameters, step_seed)
            kernel, bias, kernel_velocity, bias_velocity = state
            train_loss_sum += batch_loss_sum
            train_correct += batch_correct
        heldout_loss_sum, heldout_correct = _score_heldout(
            features_tensor, onehot_labels, heldout_index, heldout_weights, kernel, bias)
        train_losses = train_losses.write(epoch, train_loss_sum)
        train_corrects = train_corrects.write(epoch, train_correct)
        heldout_losses = heldout_losses.write(epoch, heldout_loss_sum)
        heldout_corrects = heldout_corrects.write(epoch, heldout_correct)
    return (kernel, bias, train_losses.stack(), train_corrects.stack(), heldout_losses.stack(),
            heldout_corrects.stack())


def _train_step(features_tensor, onehot_labels, rows, weights, state, hyperparameters, step_seed):
    """Take one SGD-with-momentum step of every head on its group's batch (rows, weights: [groups, batch])."""
    dropout_rates, learning_rates, l2_regularizations, label_smoothings, momentum = hyperparameters
    kernel, bias, kernel_velocity, bias_velocity = state
    inputs = tf.gather(features_tensor, rows)  # [groups, batch, feature_dim]
    labels = tf.gather(onehot_labels, rows)[:, None, None]  # [groups, 1, 1, batch, classes]
    # All heads with one dropout rate share the step's dropout mask: the comparison of grid points
    # is not blurred by different noise, and a group trains the same with or without other groups.
    noise = tf.random.stateless_uniform(
        tf.concat([[1], tf.shape(dropout_rates), tf.shape(inputs)[1:]], axis=0), seed=step_seed)
    rates = dropout_rates[None, :, None, None]
    dropped = inputs[:, None] * tf.cast(noise >= rates, tf.float32) / (1.0 - rates)

    num_classes = tf.cast(tf.shape(onehot_labels)[1], tf.float32)
    smoothing = label_smoothings[None, None, :, None, None]
    targets = labels * (1.0 - smoothing) + smoothing / num_classes
    batch_size = tf.reduce_sum(weights, axis=1)[:, None, None]  # [groups, 1, 1]
    row_weights = (weights / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0))[:, None, None]
    logits = tf.einsum("gdbi,gdric->gdrbc", dropped, kernel) + bias[:, :, :, None, :]
    log_probabilities = tf.nn.log_softmax(logits)
    cross_entropy = -tf.reduce_sum(targets * log_probabilities, axis=-1)
    l2 = l2_regularizations[None, None, :]
    loss = tf.reduce_sum(cross_entropy * row_weights, axis=-1) + l2 * tf.reduce_sum(tf.square(kernel), axis=[-2, -1])

    # The gradient of the batch-mean softmax cross-entropy with respect to the logits is
    # (softmax - target) / batch size. The L2 term adds 2 * l2 * kernel to the kernel's gradient.
    logits_gradient = (tf.exp(log_probabilities) - targets) * row_weights[..., None]
    kernel_gradient = (tf.einsum("gdbi,gdrbc->gdric", dropped, logits_gradient)
                       + 2.0 * l2[..., None, None] * kernel)
    bias_gradient = tf.reduce_sum(logits_gradient, axis=-2)

    # Keras's SGD: velocity = momentum * velocity - learning_rate * gradient; weight += velocity.
    # A group whose rows ran out before this step keeps its weights and velocities.
    active = batch_size > 0.0
    rates = learning_rates[None, None, :]
    new_kernel_velocity = momentum * kernel_velocity - rates[..., None, None] * kernel_gradient
    new_bias_velocity = momentum * bias_velocity - rates[..., None] * bias_gradient
    state = (
        tf.where(active[..., None, None], kernel + new_kernel_velocity, kernel),
        tf.where(active[..., None], bias + new_bias_velocity, bias),
        tf.where(active[..., None, None], new_kernel_velocity, kernel_velocity),
        tf.where(active[..., None], new_bias_velocity, bias_velocity),
    )
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.argmax(labels, axis=-1)), tf.float32)
    return state, loss * batch_size, tf.reduce_sum(correct * weights[:, None, None], axis=-1)


def _score_heldout(features_tensor, onehot_labels, heldout_index, heldout_weights, kernel, bias):
    """Sum each head's unsmoothed cross-entropy and correct predictions over its group's held-out rows."""
    inputs = tf.gather(features_tensor, heldout_index)  # [groups, rows, feature_dim]
    labels = tf.gather(onehot_labels, heldout_index)[:, None, None]
    logits = tf.einsum("gmi,gdric->gdrmc", inputs, kernel) + bias[:, :, :, None, :]
    cross_entropy = -tf.reduce_sum(labels * tf.nn.log_softmax(logits), axis=-1)
    correct = tf.cast(tf.equal(tf.argmax(logits, axis=-1), tf.argmax(labels, axis=-1)), tf.float32)
    weights = heldout_weights[:, None, None]
    return tf.reduce_sum(cross_entropy * weights, axis=-1), tf.reduce_sum(correct * weights, axis=-1)
