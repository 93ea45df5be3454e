"""Benchmark the ingest step: wall time and peak memory of ingesting one archive.

    .venv/bin/python scripts/benchmark_ingest.py [--archive PATH] [--docs docs/benchmarks.md]

Peak memory is the process's maximum resident set size (getrusage), which includes the Python
interpreter and the imported libraries, so it bounds what the step needs on a cluster pod.
"""

import argparse
import logging
import os
import platform
import resource
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from components import ingest  # noqa: E402  (needs the repository on sys.path)

logger = logging.getLogger("benchmark_ingest")

SECTION_HEADING = "## Ingest"
DEFAULT_ARCHIVE = REPO_ROOT.parent / "shared" / "data" / "flower_photos_dev.tgz"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="photo archive to ingest")
    parser.add_argument("--docs", type=Path, help="Markdown file whose ingest section gets the results")
    return parser.parse_args(argv)


def peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def format_section(*, command: str, archive: Path, report: ingest.IngestReport, seconds: float,
                   rss_before_mib: float, rss_peak_mib: float) -> str:
    cores = os.cpu_count()
    return "\n".join([
        SECTION_HEADING,
        "",
        f"Machine: {platform.machine()}, {cores} CPU cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}.",
        f"Command: `{command}`",
        "",
        "| archive | bytes | photos kept | duplicates | quarantined | wall time (s) | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
        f"| {archive.name} | {archive.stat().st_size:,} | {report.num_images:,} | {report.num_duplicates} | "
        f"{report.num_quarantined} | {seconds:.1f} | {rss_peak_mib:.0f} |",
        "",
        f"Peak RSS is the whole process; {rss_before_mib:.0f} MiB of it was the interpreter and its "
        "imports before ingest started. Photos stream through one at a time, so the peak grows by a small "
        "record per photo, not by the photos' bytes.",
        "",
    ])


def write_section(docs: Path, section: str) -> None:
    """Replace this script's section of docs, or append it when the file has none."""
    text = docs.read_text(encoding="utf-8") if docs.is_file() else "# Benchmarks\n\n"
    start = text.find(SECTION_HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        following = text.find("\n## ", start + len(SECTION_HEADING))
        end = len(text) if following < 0 else following + 1
        text = text[:start] + section + ("\n" + text[end:] if following >= 0 else "")
    docs.write_text(text, encoding="utf-8")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    rss_before = peak_rss_mib()

    with tempfile.TemporaryDirectory(prefix="benchmark-ingest-") as work_dir:
        started = time.perf_counter()
        report = ingest.ingest(ingest.IngestOptions(source_uri=str(args.archive)), Path(work_dir) / "dataset")
        seconds = time.perf_counter() - started

    command = "python scripts/benchmark_ingest.py " + shlex.join(argv)
    section = format_section(command=command.strip(), archive=args.archive, report=report, seconds=seconds,
                             rss_before_mib=rss_before, rss_peak_mib=peak_rss_mib())
    print(section)
    if args.docs:
        write_section(args.docs, section)
        logger.info("wrote the ingest section of %s", args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
