"""The image-classifier pipeline: ingest, split, train, evaluate, export, gate and promote.

Every step is a lightweight Python component whose body imports this project's own modules, so
`base_image` must be an image with the project installed (images/Dockerfile builds it) and
`install_kfp_package=False` keeps a cluster pod from reaching for the network at start-up.
"""


from typing import Callable

from kfp import dsl

from components import evaluate, export, gate, ingest, promote, split, train, validate
from pipelines import DEFAULT_IMAGE

PIPELINE_NAME = "flower-classifier"

_STEP_FUNCTIONS: dict[str, Callable] = {
    "validate": validate.validate_component,
    "ingest": ingest.ingest_component,
    "split": split.split_component,
    "train": train.train_component,
    "evaluate": evaluate.evaluate_component,
    "export": export.export_component,
    "gate": gate.gate_component,
    "promote": promote.promote_component,
    "reject": gate.rejection_component,
}


def build_components(image: str = DEFAULT_IMAGE) -> dict[str, Callable]:
    """Wrap each step's function as a KFP component that runs in image."""
    if not image:
        raise ValueError("image is empty: pass the component image, e.g. registry/flower-classifier-pipeline:0.1.0")
    return {
        name: dsl.component(function, base_image=image, install_kfp_package=False)
        for name, function in _STEP_FUNCTIONS.items()
    }


def build_pipeline(image: str = DEFAULT_IMAGE):
    """Return the @dsl.pipeline function whose components run in image."""
    ops = build_components(image)

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description=(
            "Turn a photo archive sorted into class folders into a TFLite image classifier with "
            "metadata, promoted to a bucket only when it passes the metrics gate."
        ),
    )
    def flower_classifier(
        bucket: str,
        source_uri: str = ingest.DEFAULT_SOURCE_URI,
        expected_sha256: str = "",
        min_images_per_class: int = ingest.DEFAULT_MIN_IMAGES_PER_CLASS,
        train_fraction: float = 0.8,
        validation_fraction: float = 0.1,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        model_spec: str = "efficientnet_lite0",
        backbone_uri: str = "",
        input_size: int = 0,
        epochs: int = 5,
        batch_size: int = 32,
        learning_rate: float = 0.005,
        momentum: float = 0.9,
        dropout_rate: float = 0.2,
        l2_regularization: float = 0.0001,
        label_smoothing: float = 0.1,
        train_whole_model: bool = False,
        use_augmentation: bool = False,
        tune_head: bool = False,
        seed: int = 0,
        quantization: str = "int8",
        model_name: str = "flower-classifier",
        model_description: str = "Identifies the class of the main object in a photo.",
        author: str = "",
        license: str = "",
        min_accuracy: float = 0.9,
        max_regression: float = 0.01,
    ):
        checked = ops["validate"](
            bucket=bucket,
            source_uri=source_uri,
            train_fraction=train_fraction,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            split_seed=split_seed,
            model_spec=model_spec,
            backbone_uri=backbone_uri,
            input_size=input_size,
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
            quantization=quantization,
            model_name=model_name,
            min_accuracy=min_accuracy,
            max_regression=max_regression,
        )

        ingested = ops["ingest"](
            source_uri=source_uri,
            expected_sha256=expected_sha256,
            min_images_per_class=min_images_per_class,
        ).after(checked)

        splits = ops["split"](
            dataset=ingested.outputs["dataset"],
            train_fraction=train_fraction,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=split_seed,
        )

        trained = ops["train"](
            images=ingested.outputs["dataset"],
            train_data=splits.outputs["train_data"],
            validation_data=splits.outputs["validation_data"],
            model_spec=model_spec,
            backbone_uri=backbone_uri,
            input_size=input_size,
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

        evaluated = ops["evaluate"](
            images=ingested.outputs["dataset"],
            model=trained.outputs["model"],
            test_data=splits.outputs["test_data"],
        )

        exported = ops["export"](
            images=ingested.outputs["dataset"],
            model=trained.outputs["model"],
            train_data=splits.outputs["train_data"],
            test_data=splits.outputs["test_data"],
            quantization=quantization,
            model_name=model_name,
            model_description=model_description,
            author=author,
            license=license,
        )

        # The gate and the promotion read the bucket's current champion, which other runs move:
        # a cached result from an earlier run would judge against a stale champion.
        judged = ops["gate"](
            accuracy=exported.outputs["accuracy"],
            min_accuracy=min_accuracy,
            max_regression=max_regression,
            bucket=bucket,
            model_name=model_name,
        )
        judged.set_caching_options(False)

        # The Else branch is more than a log line. kfp 2.17's local runner resolves a lone If's
        # condition against the pipeline's inputs, fails to find the gate's output there and
        # silently skips the branch. An If/Else pair is evaluated where the output is visible.
        with dsl.If(judged.outputs["passed"] == True, name="gate-passed"):  # noqa: E712 (KFP condition syntax)
            promoted = ops["promote"](
                tflite_model=exported.outputs["tflite_model"],
                export_metrics=exported.outputs["metrics"],
                decision=judged.outputs["decision"],
                images=ingested.outputs["dataset"],
                model=trained.outputs["model"],
                train_data=splits.outputs["train_data"],
                validation_data=splits.outputs["validation_data"],
                test_data=splits.outputs["test_data"],
                evaluation_metrics=evaluated.outputs["metrics"],
                bucket=bucket,
                model_name=model_name,
                min_accuracy=min_accuracy,
                max_regression=max_regression,
            )
            promoted.set_caching_options(False)
        with dsl.Else(name="gate-failed"):
            rejected = ops["reject"](decision=judged.outputs["decision"], model_name=model_name)
            rejected.set_caching_options(False)

    return flower_classifier
