"""The pipeline's first step: check every parameter before any work starts.

Each step checks its own options too, but ingest can take minutes on a large archive, so a typo in
a training or export parameter would otherwise surface only after that. The checks here are the
steps' own validators, called with the pipeline's arguments.
"""

from typing import NamedTuple

from components import export, gate, model_spec, split, storage, train_options


def validate_bucket(bucket: str) -> None:
    """Raise ValueError unless bucket is a writable gs:// URI or a local folder."""
    if not isinstance(bucket, str) or not bucket.strip():
        raise ValueError(
            "bucket is empty: set it to gs://BUCKET/PREFIX on a cluster, or a local folder for a "
            "local run, e.g. --bucket build/bucket"
        )
    if bucket.lower().startswith(("https://", "http://")):
        raise ValueError(f"bucket {bucket!r} is read-only over http(s): use gs://BUCKET/PREFIX or a local folder")
    storage.join(bucket, "champion.json")  # raises ValueError naming a malformed gs:// URI


def validate_source(source_uri: str) -> None:
    """Raise ValueError unless the source archive or folder exists; https:// is not checked."""
    if source_uri.lower().startswith(("https://", "http://")):
        return  # a HEAD request proves little: some servers reject it but serve the file
    if storage.is_local(source_uri):
        if not storage.to_local_path(source_uri).exists():
            raise ValueError(f"source_uri {source_uri!r} not found: pass an existing archive file or folder")
        return
    if not storage.exists(source_uri) and not storage.list_uris(source_uri):
        raise ValueError(
            f"source_uri {source_uri!r} not found: no object and no folder of that name; check the "
            "bucket and path"
        )


def validate_backbone(backbone_uri: str) -> None:
    """Raise ValueError unless a local or gs:// backbone folder contains a SavedModel."""
    if not backbone_uri or backbone_uri.lower().startswith(("https://", "http://")):
        return  # a TF Hub or Kaggle handle is resolved by tensorflow_hub when training starts
    saved_model = storage.join(backbone_uri, model_spec.SAVED_MODEL_FILE)
    if not storage.exists(saved_model):
        raise ValueError(
            f"backbone_uri {backbone_uri!r} has no {model_spec.SAVED_MODEL_FILE}: point it at the "
            "folder of a TF2 SavedModel in the TF Hub image feature-vector form"
        )


def validate_parameters(
    *,
    bucket: str,
    source_uri: str,
    train_fraction: float,
    validation_fraction: float,
    test_fraction: float,
    split_seed: int,
    model_spec_name: str,
    backbone_uri: str,
    input_size: int,
    options: train_options.TrainOptions,
    quantization: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
) -> model_spec.ModelSpec:
    """Raise ValueError for the first invalid parameter; returns the resolved model spec."""
    validate_bucket(bucket)
    gate.validate_model_name(model_name)
    gate.validate_thresholds(min_accuracy=min_accuracy, max_regression=max_regression)
    split.validate_options(
        split.SplitOptions(
            train_fraction=train_fraction,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=split_seed,
        )
    )
    spec = model_spec.get_model_spec(model_spec_name, backbone_uri=backbone_uri, input_size=input_size)
    train_options.validate_train_options(options)
    export.parse_quantization(quantization)

    # Checked last, because these two touch storage and the checks above are free.
    validate_source(source_uri)
    validate_backbone(backbone_uri)
    return spec


def validate_component(
    bucket: str,
    source_uri: str,
    train_fraction: float,
    validation_fraction: float,
    test_fraction: float,
    split_seed: int,
    model_spec: str,
    backbone_uri: str,
    input_size: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    dropout_rate: float,
    l2_regularization: float,
    label_smoothing: float,
    train_whole_model: bool,
    use_augmentation: bool,
    tune_head: bool,
    seed: int,
    quantization: str,
    model_name: str,
    min_accuracy: float,
    max_regression: float,
) -> NamedTuple("ValidateOutputs", [("model_spec_uri", str), ("input_size", int)]):
    """KFP step: fail the run at once on an invalid parameter."""
    import collections
    import logging

    from components import train_options
    from components import validate as step

    options = train_options.TrainOptions(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        momentum=momentum,
        dropout_rate=dropout_rate,
        l2_regularization=l2_regularization,
        label_smoothing=label_smoothing,
        train_whole_model=train_whole_model,
        use_augmentation=use_augmentation,
        tune_head=tune_head,
        seed=seed,
    )
    spec = step.validate_parameters(
        bucket=bucket,
        source_uri=source_uri,
        train_fraction=train_fraction,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        model_spec_name=model_spec,
        backbone_uri=backbone_uri,
        input_size=input_size,
        options=options,
        quantization=quantization,
        model_name=model_name,
        min_accuracy=min_accuracy,
        max_regression=max_regression,
    )
    logging.getLogger("components.validate").info(
        "parameters valid: backbone %s at %dx%d, %d epochs, quantization %s, gate min_accuracy %.3f",
        spec.uri, spec.input_height, spec.input_width, epochs, quantization, min_accuracy,
    )
    outputs = collections.namedtuple("ValidateOutputs", ["model_spec_uri", "input_size"])
    return outputs(spec.uri, spec.input_height)
