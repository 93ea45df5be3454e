"""Training options of the train step, with Model Maker's image classifier defaults, and their checks."""

from __future__ import annotations

import dataclasses
from typing import Any

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Hyperparameters of training; the defaults are Model Maker's image classifier defaults."""

    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 0.005
    momentum: float = 0.9
    dropout_rate: float = 0.2
    l2_regularization: float = 0.0001
    label_smoothing: float = 0.1
    train_whole_model: bool = False
    use_augmentation: bool = False  # random crop + horizontal flip of the training photos
    seed: int = 0
    tune_head: bool = False  # grid-search learning rate x epochs x dropout (components.tuning)
    # False runs the frozen backbone in every epoch, as Model Maker does: slower, same model.
    cache_features: bool = True
    feature_memory_bytes: int = GIB  # features past this size go to a file instead of RAM
    feature_spill_dir: str = ""  # folder for that file; "" means the system's temp folder


# name -> (type, low, high, whether low is allowed, whether high is allowed)
_NUMERIC_RANGES: dict[str, tuple[type, float, float, bool, bool]] = {
    "epochs": (int, 1, 1000, True, True),
    "batch_size": (int, 1, 4096, True, True),
    "learning_rate": (float, 0.0, 1.0, False, True),
    "momentum": (float, 0.0, 1.0, True, False),
    "dropout_rate": (float, 0.0, 1.0, True, False),
    "l2_regularization": (float, 0.0, 1.0, True, True),
    "label_smoothing": (float, 0.0, 1.0, True, False),
    "seed": (int, 0, 2**31 - 1, True, True),
    "feature_memory_bytes": (int, 0, 2**50, True, True),
}
_BOOLEAN_OPTIONS = ("train_whole_model", "use_augmentation", "tune_head", "cache_features")


def validate_train_options(options: TrainOptions) -> None:
    """Raise ValueError naming the option, its allowed values and the fix, for any invalid option."""
    defaults = TrainOptions()
    for name, (kind, low, high, low_inclusive, high_inclusive) in _NUMERIC_RANGES.items():
        _validate_number(
            name, getattr(options, name), kind=kind, low=low, high=high,
            low_inclusive=low_inclusive, high_inclusive=high_inclusive, default=getattr(defaults, name),
        )
    for name in _BOOLEAN_OPTIONS:
        value = getattr(options, name)
        if not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} is invalid: allowed values are True and False")
    if options.tune_head and (options.train_whole_model or options.use_augmentation):
        raise ValueError(
            f"tune_head=True is invalid with train_whole_model={options.train_whole_model} and "
            f"use_augmentation={options.use_augmentation}: head tuning trains on backbone features "
            "computed once, which needs a frozen backbone and no augmentation; "
            "set tune_head=False or set both others to False"
        )
    if options.tune_head and not options.cache_features:
        raise ValueError(
            "tune_head=True is invalid with cache_features=False: head tuning trains on cached "
            "backbone features; set cache_features=True or tune_head=False"
        )


def _validate_number(
    name: str, value: Any, *, kind: type, low: float, high: float,
    low_inclusive: bool, high_inclusive: bool, default: Any,
) -> None:
    lower = "<=" if low_inclusive else "<"
    upper = "<=" if high_inclusive else "<"
    allowed = f"{'an integer' if kind is int else 'a number'} with {low} {lower} {name} {upper} {high}"
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_number or (kind is int and not isinstance(value, int)):
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed} (default {default})")
    too_low = value < low if low_inclusive else value <= low
    too_high = value > high if high_inclusive else value >= high
    if too_low or too_high or value != value:
        raise ValueError(
            f"{name}={value!r} is out of range: expected {allowed}; "
            f"set {name} within that range (default {default})"
        )


def uses_feature_cache(options: TrainOptions) -> bool:
    """Return whether training computes backbone features once instead of in every epoch."""
    return options.cache_features and not options.train_whole_model and not options.use_augmentation




