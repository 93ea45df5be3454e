"""Benchmark the export choices: size, test accuracy and latency of each quantization.

Exports one trained Model folder as float32, dynamic, float16 and int8, evaluates each .tflite
on the test split with the LiteRT interpreter, and prints a Markdown table. With --docs, it
replaces the export section of that Markdown file (docs/benchmarks.md) and keeps the others.

Targets: int8 within 1.0 accuracy point of float32, and an int8 file of at most 5 MB.

    .venv/bin/python scripts/benchmark_export.py --model-dir build/model \\
        --images-dir build/images --train-dir build/train --test-dir build/test \\
        --docs docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shlex
import sys
import tempfile
from pathlib import Path

import components  # noqa: F401  (TF_USE_LEGACY_KERAS must be set before TensorFlow loads)
from components import export, tflite_eval

logger = logging.getLogger(__name__)

SECTION_HEADING = "## Export: quantization choices"
MAX_INT8_ACCURACY_DROP_POINTS = 1.0
MAX_INT8_SIZE_BYTES = 5 * 1000 * 1000


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True, type=Path, help="Model folder written by train")
    parser.add_argument("--images-dir", required=True, type=Path, help="image Dataset folder")
    parser.add_argument("--train-dir", required=True, type=Path, help="train split (int8 calibration)")
    parser.add_argument("--test-dir", required=True, type=Path, help="test split to evaluate on")
    parser.add_argument(
        "--choices", default="float32,dynamic,float16,int8",
        help="comma-separated quantization choices (default: all four)",
    )
    parser.add_argument("--num-threads", type=int, default=tflite_eval.DEFAULT_NUM_THREADS,
                        help="interpreter threads for the latency measurement")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="folder for the exported models (default: a temporary folder)")
    parser.add_argument("--docs", type=Path, default=None,
                        help="Markdown file whose export section gets the results")
    return parser.parse_args(argv)


def benchmark(arguments: argparse.Namespace, output_dir: Path) -> list[dict]:
    """Export and evaluate each choice; returns one result row per choice."""
    choices = [export.parse_quantization(name.strip()) for name in arguments.choices.split(",")]
    results = []
    for choice in choices:
        info = export.export_model(
            arguments.model_dir, output_dir / choice.value, images_dir=arguments.images_dir,
            train_dir=arguments.train_dir, options=export.ExportOptions(quantization=choice.value),
        )
        evaluation = tflite_eval.evaluate_tflite(
            output_dir / choice.value / export.TFLITE_MODEL_FILE, images_dir=arguments.images_dir,
            split_dir=arguments.test_dir, num_threads=arguments.num_threads,
        )
        results.append({"choice": choice.value, "info": info, "evaluation": evaluation})
    return results


def check_targets(results: list[dict]) -> list[str]:
    """Return one line per target: the measured value and whether it is met."""
    by_choice = {row["choice"]: row["evaluation"] for row in results}
    if "int8" not in by_choice or "float32" not in by_choice:
        return ["targets not checked: they need both int8 and float32"]
    drop = 100.0 * (by_choice["float32"].accuracy - by_choice["int8"].accuracy)
    size = by_choice["int8"].size_bytes
    drop_verdict = "met" if drop <= MAX_INT8_ACCURACY_DROP_POINTS else "MISSED"
    size_verdict = "met" if size <= MAX_INT8_SIZE_BYTES else "MISSED"
    return [
        f"int8 accuracy minus float32 accuracy: {-drop:+.2f} points (target: at most "
        f"{MAX_INT8_ACCURACY_DROP_POINTS} point below): {drop_verdict}",
        f"int8 file is {size:,} bytes (target at most {MAX_INT8_SIZE_BYTES:,}): {size_verdict}",
    ]


def format_section(results: list[dict], *, command: str, num_threads: int) -> str:
    """Render the results as the export section of the benchmarks page."""
    num_images = results[0]["evaluation"].num_images
    lines = [
        SECTION_HEADING,
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}.",
        f"Command: `{command}`",
        f"Test images: {num_images}. Latency: mean of one image per invoke after warm-up, "
        f"LiteRT interpreter with {num_threads} thread(s).",
        "",
        "| quantization | size (bytes) | test accuracy | mean latency (ms) | input |",
        "|---|---|---|---|---|",
    ]
    for row in results:
        evaluation, info = row["evaluation"], row["info"]
        lines.append(
            f"| {row['choice']} | {evaluation.size_bytes:,} | {evaluation.accuracy:.4f} | "
            f"{evaluation.mean_latency_ms:.2f} | {info.input_dtype} |"
        )
    lines += [""] + [f"- {line}" for line in check_targets(results)]
    return "\n".join(lines) + "\n"


def replace_section(document: str, section: str) -> str:
    """Replace the export section of document (up to the next level-2 heading) or append it."""
    pattern = re.compile(rf"^{re.escape(SECTION_HEADING)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(document):
        return pattern.sub(lambda _: section + "\n", document, count=1).rstrip("\n") + "\n"
    separator = "\n" if document and not document.endswith("\n\n") else ""
    return document + separator + section


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as temporary:
        output_dir = arguments.output_dir or Path(temporary)
        results = benchmark(arguments, output_dir)

    command = "python scripts/benchmark_export.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    section = format_section(results, command=command, num_threads=arguments.num_threads)
    sys.stdout.write(section)
    if arguments.docs is not None:
        existing = arguments.docs.read_text(encoding="utf-8") if arguments.docs.is_file() else ""
        arguments.docs.write_text(replace_section(existing, section), encoding="utf-8")
        logger.info("wrote the export section of %s", arguments.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
