"""Command-line entry point: compile the pipeline to YAML, run it here, or submit it to a cluster.

    python -m pipelines.cli compile [--image IMAGE] [--output FILE]
    python -m pipelines.cli run --bucket BUCKET [--source URI] [--backbone URI] [--set NAME=VALUE ...]
    python -m pipelines.cli submit --host URL --bucket gs://BUCKET/PREFIX [--image IMAGE] [--set ...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
from pipelines import DEFAULT_IMAGE

logger = logging.getLogger("pipelines.cli")

DEFAULT_YAML = Path(__file__).resolve().parent / "flower_classifier.yaml"
DEFAULT_PIPELINE_ROOT = Path("build") / "local_outputs"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def compile_pipeline(*, output: str | Path, image: str) -> Path:
    """Compile the pipeline for image into a KFP v2 YAML file at output."""
    from kfp import compiler

    from pipelines.pipeline import build_pipeline

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline_func=build_pipeline(image), package_path=str(output))
    logger.info("compiled the pipeline for image %s into %s", image, output)
    return output


def pipeline_parameters() -> dict[str, inspect.Parameter]:
    """Return the pipeline's parameters by name, with their defaults and annotations."""
    from pipelines.pipeline import build_pipeline

    function = build_pipeline().pipeline_func
    return dict(inspect.signature(function).parameters)


def parse_assignments(assignments: list[str]) -> dict[str, object]:
    """Turn NAME=VALUE strings into pipeline arguments of the parameter's type."""
    parameters = pipeline_parameters()
    arguments: dict[str, object] = {}
    for assignment in assignments:
        name, separator, text = assignment.partition("=")
        if not separator:
            raise SystemExit(f"--set {assignment!r} is not NAME=VALUE, e.g. --set epochs=10")
        if name not in parameters:
            known = ", ".join(sorted(parameters))
            raise SystemExit(f"--set {name}: unknown pipeline parameter; known parameters: {known}")
        arguments[name] = _convert(name, text, parameters[name].annotation)
    return arguments


def _convert(name: str, text: str, annotation) -> object:
    kind = annotation if isinstance(annotation, type) else {"bool": bool, "int": int, "float": float}.get(
        str(annotation), str
    )
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise SystemExit(f"--set {name}={text}: expected true or false")
        return text.lower() == "true"
    try:
        return kind(text)
    except ValueError:
        raise SystemExit(f"--set {name}={text}: expected a value of type {kind.__name__}") from None


def run_locally(*, arguments: dict[str, object], pipeline_root: str | Path, enable_caching: bool = False) -> None:
    """Run the pipeline with the KFP local runner, each step a subprocess of this Python.

    With enable_caching, a step whose inputs match an earlier run under the same pipeline_root
    reuses that run's outputs; the gate and the promotion never do.
    """
    from kfp import local

    from pipelines.pipeline import build_pipeline

    # Fail on a bad value now, not after ingest has run for minutes.
    validate_arguments(arguments)

    # The local runner starts each step with this interpreter (use_venv=False), so the steps
    # import the project and the locked packages of the environment that runs this command.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=enable_caching,
    )

    # The runner warns when a step's base image is not a plain Python image. Here the steps run
    # in this environment on purpose, because it has the same locked packages as that image.
    warnings.filterwarnings("ignore", message=r"You may be attemping to run a task that uses custom", category=RuntimeWarning)
    started = time.monotonic()
    build_pipeline()(**arguments)
    logger.info("pipeline finished in %.1f s; step outputs are under %s", time.monotonic() - started,
                Path(pipeline_root).resolve())


def validate_arguments(arguments: dict[str, object]) -> None:
    """Run the pipeline's validate step in this process on arguments plus the defaults."""
    from components import validate

    values = {
        name: parameter.default
        for name, parameter in pipeline_parameters().items()
        if parameter.default is not inspect.Parameter.empty
    }
    values.update(arguments)
    names = inspect.signature(validate.validate_component).parameters
    validate.validate_component(**{name: values[name] for name in names})


def report_outcome(*, pipeline_root: str | Path, started_at: float, bucket: str, model_name: str) -> bool:
    """Log, as the run's last line, whether the run that started at started_at promoted its model.

    Returns True when it did. A passing model can still lose a race against another run that
    promoted at the same time, so the champion pointer decides, not the gate alone.
    """
    import datetime

    from components import gate

    decision = _latest_decision(Path(pipeline_root), started_at=started_at)
    champion = gate.read_champion(bucket=bucket, model_name=model_name) or {}
    champion_version = champion.get("version", "none")
    if decision is None:
        logger.warning("no gate decision found under %s; the champion of %s is %s", pipeline_root, model_name,
                       champion_version)
        return False
    if not decision.passed:
        logger.warning("NOT PROMOTED: the gate rejected this run's model (%s); the champion of %s stays %s",
                       _reasons(decision), model_name, champion_version)
        return False

    promoted_at = champion.get("promoted_at")
    promoted_now = bool(promoted_at) and (
        datetime.datetime.fromisoformat(promoted_at).timestamp() >= int(started_at)
        and champion.get("metrics", {}).get("accuracy") == decision.accuracy
    )
    if promoted_now:
        logger.info("PROMOTED: version %s is now the champion of %s (%s); files in %s",
                    champion_version, model_name, _reasons(decision), champion.get("uri"))
        return True
    logger.warning("NOT PROMOTED: the gate passed (%s), but the champion of %s is %s, which another run "
                   "promoted; see the promote step's log", _reasons(decision), model_name, champion_version)
    return False


def _latest_decision(pipeline_root: Path, *, started_at: float):
    from components import gate

    candidates = [
        path for path in pipeline_root.glob(f"*/gate-component/decision/{gate.DECISION_FILE}")
        if path.stat().st_mtime >= started_at
    ]
    if not candidates:
        return None
    return gate.read_decision(max(candidates, key=lambda path: path.stat().st_mtime).parent)


def _reasons(decision) -> str:
    return "; ".join(check.reason for check in decision.checks)


def submit_to_cluster(
    *,
    host: str,
    arguments: dict[str, object],
    image: str,
    experiment: str,
    run_name: str = "",
    namespace: str = "",
) -> str:
    """Compile the pipeline for image and start a run on the Kubeflow Pipelines API at host.

    Returns the run's id. Every step then runs on the cluster, so the bucket, the source and the
    backbone must be URIs that the cluster's pods can reach: a local path is rejected here.
    """
    import tempfile

    from kfp import Client

    for name in ("bucket", "source_uri", "backbone_uri"):
        value = str(arguments.get(name, ""))
        if value and "://" not in value:
            raise SystemExit(
                f"{name}={value!r} is a local path, which pods on the cluster cannot read or write: "
                "use a gs:// URI (or https:// for a source or backbone)"
            )
    validate_arguments(arguments)

    with tempfile.TemporaryDirectory(prefix="flower-pipeline-") as folder:
        package = compile_pipeline(output=Path(folder) / "pipeline.yaml", image=image)
        client = Client(host=host, namespace=namespace or "kubeflow")
        result = client.create_run_from_pipeline_package(
            str(package),
            arguments=arguments,
            run_name=run_name or None,
            experiment_name=experiment,
            namespace=namespace or None,
        )
    logger.info("submitted run %s to %s in experiment %s", result.run_id, host, experiment)
    return result.run_id


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flower-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    image_help = (
        "component image with this project installed, pushed where the cluster can pull it "
        f"(default: $FLOWER_PIPELINE_IMAGE, else {DEFAULT_IMAGE})"
    )

    compile_command = commands.add_parser("compile", help="compile the pipeline to KFP v2 YAML")
    compile_command.add_argument("--output", default=str(DEFAULT_YAML), help="YAML file to write")
    compile_command.add_argument("--image", default=os.environ.get("FLOWER_PIPELINE_IMAGE") or None, help=image_help)

    run_command = commands.add_parser("run", help="run the pipeline on this machine (KFP local runner)")
    _add_run_arguments(run_command, bucket_help="gs://bucket/prefix or a local folder to promote into")
    run_command.add_argument("--pipeline-root", default=str(DEFAULT_PIPELINE_ROOT), help="folder for step outputs (default: %(default)s)")

    submit_command = commands.add_parser(
        "submit",
        help="start a run on a Kubeflow Pipelines cluster",
        description=(
            "Compile the pipeline for --image, check the parameters here, then start a run through the "
            "Kubeflow Pipelines API at --host. Bucket, source and backbone must be URIs that the "
            "cluster's pods can reach (gs://, or https:// for a source or backbone)."
        ),
    )
    _add_run_arguments(submit_command, bucket_help="gs://bucket/prefix to promote into")
    submit_command.add_argument("--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. https://kfp.example.com/pipeline")
    submit_command.add_argument("--image", default=os.environ.get("FLOWER_PIPELINE_IMAGE") or None, help=image_help)
    submit_command.add_argument("--experiment", default="flower-classifier", help="experiment to file the run under")
    submit_command.add_argument("--run-name", default="", help="display name of the run (default: generated)")
    submit_command.add_argument("--namespace", default="", help="Kubernetes namespace of a multi-user deployment")
    return parser


def _add_run_arguments(command: argparse.ArgumentParser, *, bucket_help: str) -> None:
    command.add_argument("--bucket", required=True, help=bucket_help)
    command.add_argument("--source", help="photo archive or folder URI (default: the public flowers archive)")
    command.add_argument("--backbone", help="backbone URI for the model spec (default: the spec's TF Hub handle)")
    command.add_argument(
        "--set", dest="assignments", action="append", default=[], metavar="NAME=VALUE",
        help="any other pipeline parameter, e.g. --set epochs=10 --set tune_head=true; the README lists them",
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return _run_command(args)
    except ValueError as error:
        # Invalid parameters: the message names the value and the fix, so a traceback adds nothing.
        logger.error("%s", error)
        return 2
    except RuntimeError as error:
        if "finished with status" not in str(error):
            raise
        # The local runner's message names the failed step; that step's own error is in its log.
        logger.error("%s See the failed step's error in its log above.", _ANSI_ESCAPE.sub("", str(error)))
        return 1


def _run_command(args: argparse.Namespace) -> int:

    if args.command == "compile":
        compile_pipeline(output=args.output, image=args.image or DEFAULT_IMAGE)
        return 0

    local_paths = args.command == "run"
    arguments = parse_assignments(args.assignments)
    for name, value in (("bucket", args.bucket), ("source_uri", args.source), ("backbone_uri", args.backbone)):
        if value:
            arguments[name] = _absolute_if_local(value) if local_paths else value

    if args.command == "submit":
        submit_to_cluster(
            host=args.host, arguments=arguments, image=args.image or DEFAULT_IMAGE,
            experiment=args.experiment, run_name=args.run_name, namespace=args.namespace,
        )
        return 0

    started_at = time.time()
    run_locally(arguments=arguments, pipeline_root=args.pipeline_root)
    model_name = arguments.get("model_name", pipeline_parameters()["model_name"].default)
    report_outcome(pipeline_root=args.pipeline_root, started_at=started_at, bucket=str(arguments["bucket"]),
                   model_name=str(model_name))
    return 0


def _absolute_if_local(uri: str) -> str:
    # Each step is a subprocess that need not share this working folder, so a relative path is
    # resolved here, against the folder the user ran the command in.
    if "://" in uri:
        return uri
    return str(Path(uri).expanduser().resolve())


if __name__ == "__main__":
    sys.exit(main())
