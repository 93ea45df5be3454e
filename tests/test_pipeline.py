"""The pipeline compiled to YAML, its command line, and whole runs on the KFP local runner."""

import json
import logging
import time
from pathlib import Path

import pytest
import yaml

from pipelines import cli
from tests.conftest import REPO_ROOT
from tests.tiny_backbone import save_tiny_backbone

STEPS = ("validate", "ingest", "split", "train", "evaluate", "export", "gate", "promote", "rejection")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> dict:
    path = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    cli.compile_pipeline(output=path, image="registry.example.com/team/flower-classifier:1.2.3")
    return yaml.safe_load(path.read_text())


def test_compile_uses_project_image_everywhere(compiled):
    executors = compiled["deploymentSpec"]["executors"]

    assert len(executors) == len(STEPS)
    for name, executor in executors.items():
        assert executor["container"]["image"] == "registry.example.com/team/flower-classifier:1.2.3", name


def test_compile_installs_nothing_at_pod_start(compiled):
    for name, executor in compiled["deploymentSpec"]["executors"].items():
        command = " ".join(executor["container"]["command"])
        assert "pip install" not in command, f"{name} installs packages when its pod starts"


def _conditional_tasks(compiled: dict) -> dict[str, list[str]]:
    """Map each condition in the compiled pipeline to the tasks of the sub-DAG it guards."""
    dags = [compiled["root"]["dag"]] + [spec["dag"] for spec in compiled["components"].values() if "dag" in spec]
    guarded = {}
    for dag in dags:
        for task in dag["tasks"].values():
            if "triggerPolicy" in task:
                sub_dag = compiled["components"][task["componentRef"]["name"]]["dag"]
                guarded[task["triggerPolicy"]["condition"]] = sorted(sub_dag["tasks"])
    return guarded


def test_compile_puts_promotion_under_gate_condition(compiled):
    guarded = _conditional_tasks(compiled)
    passed = "inputs.parameter_values['pipelinechannel--gate-component-passed'] == true"

    assert guarded == {passed: ["promote-component"], f"!({passed})": ["rejection-component"]}


def test_compile_exposes_training_defaults(compiled):
    parameters = compiled["root"]["inputDefinitions"]["parameters"]

    assert parameters["epochs"]["defaultValue"] == 5
    assert parameters["batch_size"]["defaultValue"] == 32
    assert parameters["learning_rate"]["defaultValue"] == 0.005
    assert parameters["model_spec"]["defaultValue"] == "efficientnet_lite0"
    assert parameters["quantization"]["defaultValue"] == "int8"
    assert "defaultValue" not in parameters["bucket"]


def test_committed_yaml_matches_compiler(tmp_path):
    fresh = tmp_path / "pipeline.yaml"
    cli.compile_pipeline(output=fresh, image="flower-classifier-pipeline:0.1.0")

    assert fresh.read_text() == cli.DEFAULT_YAML.read_text(), (
        "pipelines/flower_classifier.yaml is stale: run make compile"
    )


def test_cli_set_rejects_unknown_parameter():
    with pytest.raises(SystemExit, match=r"--set epoch: unknown pipeline parameter; known parameters: .*epochs"):
        cli.parse_assignments(["epoch=3"])


def test_cli_set_converts_types():
    arguments = cli.parse_assignments(["epochs=7", "learning_rate=0.01", "tune_head=true", "author=Ann"])

    assert arguments == {"epochs": 7, "learning_rate": 0.01, "tune_head": True, "author": "Ann"}


def test_cli_set_rejects_bad_boolean():
    with pytest.raises(SystemExit, match=r"--set tune_head=yes: expected true or false"):
        cli.parse_assignments(["tune_head=yes"])


def test_cli_run_rejects_bad_value_before_work(tmp_path, caplog):
    pipeline_root = tmp_path / "outputs"

    status = cli.main(["run", "--bucket", str(tmp_path / "bucket"), "--pipeline-root", str(pipeline_root),
                       "--set", "epochs=0"])

    assert status == 2
    assert "epochs=0 is out of range" in caplog.text
    assert not pipeline_root.exists()


def test_cli_run_rejects_missing_source_before_work(tmp_path, caplog):
    pipeline_root = tmp_path / "outputs"
    missing = tmp_path / "no_such_archive.tgz"

    status = cli.main(["run", "--bucket", str(tmp_path / "bucket"), "--pipeline-root", str(pipeline_root),
                       "--source", str(missing)])

    assert status == 2
    assert f"source_uri '{missing}' not found: pass an existing archive file or folder" in caplog.text
    assert not pipeline_root.exists()


def test_cli_run_rejects_backbone_without_saved_model(tmp_path, caplog, mini_archive):
    empty_backbone = tmp_path / "backbone"
    empty_backbone.mkdir()

    status = cli.main(["run", "--bucket", str(tmp_path / "bucket"), "--pipeline-root", str(tmp_path / "outputs"),
                       "--source", str(mini_archive), "--backbone", str(empty_backbone)])

    assert status == 2
    assert f"backbone_uri '{empty_backbone}' has no saved_model.pb" in caplog.text


def _run_arguments(tmp_path: Path, **overrides) -> dict:
    backbone = tmp_path / "tiny_backbone"
    if not backbone.exists():
        save_tiny_backbone(backbone)
    arguments = {
        "bucket": str(tmp_path / "bucket"),
        "model_spec": "custom",
        "backbone_uri": str(backbone),
        "input_size": 32,
        "epochs": 2,
        "author": "Test Suite",
        "license": "Apache-2.0",
    }
    arguments.update(overrides)
    return arguments


def _versions(bucket: Path) -> list[str]:
    folder = bucket / "flower-classifier" / "versions"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def _decision(pipeline_root: Path) -> dict:
    decisions = sorted(pipeline_root.rglob("decision.json"), key=lambda path: path.stat().st_mtime)
    assert decisions, f"no decision.json under {pipeline_root}"
    return json.loads(decisions[-1].read_text())


@pytest.mark.slow
def test_pipeline_promotes_then_gate_blocks(gcs_server, tmp_path, caplog):
    # The source is the real default URI, served by the emulator from the mini archive.
    caplog.set_level(logging.INFO, logger="pipelines.cli")
    pipeline_root = tmp_path / "outputs"
    bucket = tmp_path / "bucket"

    first_run_started = time.time()
    cli.run_locally(arguments=_run_arguments(tmp_path, min_accuracy=0.0), pipeline_root=pipeline_root,
                    enable_caching=True)

    champion = json.loads((bucket / "flower-classifier" / "champion.json").read_text())
    versions = _versions(bucket)
    assert versions == [champion["version"]]
    version_dir = bucket / "flower-classifier" / "versions" / champion["version"]
    for name in ("model.tflite", "labels.txt", "metrics.json", "model_card.md"):
        assert (version_dir / name).is_file(), name
    assert (version_dir / "labels.txt").read_text().split() == ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    assert _decision(pipeline_root)["passed"] is True
    assert cli.report_outcome(pipeline_root=pipeline_root, started_at=first_run_started, bucket=str(bucket),
                              model_name="flower-classifier") is True
    assert f"PROMOTED: version {champion['version']} is now the champion of flower-classifier" in caplog.text
    accuracy = champion["metrics"]["accuracy"]
    assert accuracy < 1.0, "the tiny random backbone should not classify every test photo right"

    # Same inputs with the cache on: only the gate runs again, and it must take the other branch.
    second_run_started = time.time()
    cli.run_locally(arguments=_run_arguments(tmp_path, min_accuracy=1.0), pipeline_root=pipeline_root,
                    enable_caching=True)

    assert _decision(pipeline_root)["passed"] is False
    assert _versions(bucket) == versions
    unchanged = json.loads((bucket / "flower-classifier" / "champion.json").read_text())
    assert unchanged == champion
    assert cli.report_outcome(pipeline_root=pipeline_root, started_at=second_run_started, bucket=str(bucket),
                              model_name="flower-classifier") is False
    assert "NOT PROMOTED: the gate rejected this run's model" in caplog.text
    assert "< min_accuracy 1.000" in caplog.text
