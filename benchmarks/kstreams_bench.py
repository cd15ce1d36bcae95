"""The Kafka Streams contender of ``make bench``, and the "identical results" checks.

``benchmarks/kstreams/`` is a small Kafka Streams (Processor API) app doing the worker's job; it
is built here with Maven the first time (offline when ~/.m2 already holds its dependencies),
then run like the other contenders: its own process, a fresh application.id (its consumer
group), done when the group's committed offsets equal the end offsets, then SIGTERM. On SIGTERM
it closes, dumps its store and exits; the dump is compared with the fold of the log
(``benchmarks/verify.py``), as are our worker's stores.

bench.py calls: ``add_arguments`` (flags), ``run`` (the row), ``check_worker`` (our rows),
``ratio_lines`` and ``markdown_notes``. The CI smoke test (``--small``) builds no Java unless
``--kstreams`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import verify
from benchmarks.common import Prefill, run_measured

if TYPE_CHECKING:
    from benchmarks.bench import Bench, Report, Row

ROOT = Path(__file__).resolve().parent.parent
APP_DIR = ROOT / "benchmarks" / "kstreams"
APP_JAR = APP_DIR / "target" / "kstreams-replica.jar"
APP_LIB = APP_DIR / "target" / "lib"
MAIN_CLASS = "io.streamreplica.bench.Main"
NAME = "Kafka Streams app (same job)"
OURS = "stream-replica run (max_records 100)"
BUILD_TIMEOUT_S = 900.0

# Expected final state per topic, computed once per run (several contenders read one topic).
_expected: dict[str, dict[str, verify.GrainDigest]] = {}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-kstreams", action="store_true", help="leave out the Kafka Streams app"
    )
    parser.add_argument(
        "--kstreams", action="store_true", help="run the Kafka Streams app in --small too"
    )
    parser.add_argument(
        "--kstreams-heap", default="256m", help="the app's JVM -Xmx (256m, as ConsumerPerformance)"
    )
    parser.add_argument(
        "--skip-verify",
        action="store_true",
        help="do not compare the final states with the fold of the log",
    )


def wanted(args: argparse.Namespace) -> bool:
    return not args.skip_kstreams and (not args.small or args.kstreams)


# --- build --------------------------------------------------------------------------------


def _built() -> bool:
    if not APP_JAR.exists() or not APP_LIB.is_dir():
        return False
    built_at = APP_JAR.stat().st_mtime
    sources = [APP_DIR / "pom.xml", *(APP_DIR / "src").rglob("*.java")]
    return all(source.stat().st_mtime <= built_at for source in sources)


async def build(log_dir: Path) -> str | None:
    """Build the app unless it is up to date; None when ready, else why not (one line)."""
    if shutil.which(_java()) is None:
        return "java not found (JAVA_HOME or PATH; Java 17+ runs the Kafka Streams app)"
    if _built():
        return None
    mvn = shutil.which("mvn")
    if mvn is None:
        return "mvn not found on PATH (Maven builds benchmarks/kstreams)"
    shutil.rmtree(APP_LIB, ignore_errors=True)  # copy-dependencies never removes stale jars
    log = log_dir / "kstreams-build.log"
    started = time.monotonic()
    # Offline first: ~/.m2 usually holds everything after the first build.
    for attempt in (["-o"], []):
        with log.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                mvn, "-q", "-B", *attempt, "package", cwd=APP_DIR, stdout=out, stderr=out
            )
            try:
                code = await asyncio.wait_for(proc.wait(), BUILD_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return f"mvn package did not finish within {BUILD_TIMEOUT_S:.0f} s (see {log})"
        if code == 0 and _built():
            where = "offline" if attempt else "online"
            print(f"  built {APP_JAR.name} ({where}) in {time.monotonic() - started:.1f} s")
            return None
    return f"mvn package failed (see {log})"


# --- the contender ------------------------------------------------------------------------


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java") or "java"


def command(bench: Bench, data: Prefill, app_id: str, state_dir: Path, dump: Path) -> list[str]:
    return [
        _java(),
        f"-Xmx{bench.args.kstreams_heap}",
        "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
        "-cp",
        f"{APP_JAR}{os.pathsep}{APP_LIB / '*'}",
        MAIN_CLASS,
        "--bootstrap-servers",
        bench.bootstrap,
        "--topic",
        data.topic,
        "--application-id",
        app_id,
        "--state-dir",
        str(state_dir),
        "--dump",
        str(dump),
    ]


async def run(bench: Bench, data: Prefill, row_type: type[Row]) -> Row:
    """Build (if needed) and run the app on ``data``; the row, verified unless --skip-verify."""
    problem = await build(bench.logs)
    if problem is not None:
        return row_type(NAME, data.records, data.bytes, 0.0, failed=problem)
    label = f"kstreams-{uuid.uuid4().hex[:4]}"  # fresh per run, even on one topic
    app_id = bench.group(label)  # application.id = the app's consumer group
    workdir = bench.workdir / label
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    dump = workdir / "dump.jsonl"
    assert bench.watcher is not None
    result = await run_measured(
        label,
        command(bench, data, app_id, workdir / "state", dump),
        bench.logs,
        done=bench.watcher.caught_up(app_id, data),
        timeout_s=bench.timeout_for(data.records),
        cwd=ROOT,
    )
    row = row_type(NAME, data.records, data.bytes, result.wall_s, None, result.cpu_s)
    row.peak_rss_mib = result.peak_rss_mib
    try:
        if result.exit_code != 0 or result.timed_out:
            row.failed = f"exit {result.exit_code}: {result.stderr_tail(1)[:200]}"
            return row
        info = _stdout_info(result.stdout)
        if "running_at" in info:
            row.join_s = info["running_at"] - result.launched
        row.counts = info.get("counts", {})
        row.note = (
            f"Kafka Streams {_kafka_streams_version()}, Processor API, persistent RocksDB store, "
            f"changelog off, commit.interval.ms 100, 1 stream thread, JVM -Xmx"
            f"{bench.args.kstreams_heap}; join = state RUNNING"
        )
        if "dump_s" in info:
            row.note += f"; CPU includes its store dump after close ({info['dump_s']:.2f} s)"
        if not bench.args.skip_verify:
            if not dump.exists():
                row.failed = f"no dump at {dump}"
                return row
            expected = await expected_for(bench, data)
            apply(row, verify.compare(expected, verify.dump_file(dump)))
        return row
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _stdout_info(stdout: str) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict):
                info.update(obj)
    return info


def _kafka_streams_version() -> str:
    for jar in APP_LIB.glob("kafka-streams-*.jar"):
        return jar.name.removeprefix("kafka-streams-").removesuffix(".jar")
    return "?"


# --- verification -------------------------------------------------------------------------


async def expected_for(bench: Bench, data: Prefill) -> dict[str, verify.GrainDigest]:
    expected = _expected.get(data.topic)
    if expected is None:
        started = time.monotonic()
        expected = await verify.expected_from_topic(bench.bootstrap, data.topic, data.end_offsets)
        _expected[data.topic] = expected
        print(
            f"  expected state: the fold of {data.total_offsets:,} records of {data.topic} = "
            f"{len(expected):,} grains ({time.monotonic() - started:.1f} s)",
            flush=True,
        )
    return expected


def apply(row: Row, outcome: verify.Verification) -> None:
    """Print the outcome; a mismatch fails the row."""
    print(f"  {row.name}: {outcome.summary()}", flush=True)
    if outcome.ok:
        row.note = f"{row.note}; {outcome.summary()}" if row.note else outcome.summary()
    else:
        row.failed = outcome.summary()


async def check_worker(bench: Bench, row: Row, data: Prefill, dbs: Sequence[Path]) -> None:
    """Verify one worker's store on the main topic (growth and backlog topics are not)."""
    if bench.args.skip_verify or row.failed or len(dbs) != 1:
        return
    if data is not bench.report.main_prefill:
        return
    try:
        grains = verify.worker_store(dbs)
    except Exception as exc:  # an unreadable store is a failed check, not a crashed bench
        row.failed = f"NOT verified: cannot read {dbs[0]}: {exc}"
        return
    apply(row, verify.compare(await expected_for(bench, data), grains))


# --- report -------------------------------------------------------------------------------


def ratio_lines(report: Report) -> list[str]:
    args = report.args
    if args.skip_kstreams or (args.small and not args.kstreams):
        missing = "--skip-kstreams" if args.skip_kstreams else "not run in --small"
        return [f"ours(100)/kafka-streams = n/a ({missing})"]
    ours, kstreams = report.row(OURS), report.row(NAME)
    if ours is None or kstreams is None:
        return ["ours(100)/kafka-streams = n/a (a run failed)"]
    return [f"ours(100)/kafka-streams = {ours.best_rate / kstreams.best_rate:.2f}"]


def markdown_notes(report: Report) -> list[str]:
    notes = [
        "- The Kafka Streams app (`benchmarks/kstreams/`, Java, built with Maven by the bench) "
        "decodes and validates every record with msgpack-core, keeps the highest sequence per "
        "grain in a persistent RocksDB key-value store (changelog off, Kafka Streams' default "
        "10 MiB record cache in front), commits every 100 ms with one stream thread; done as "
        "for Quix; then it closes and dumps its store (not in *wall s*; in *CPU s*).",
    ]
    if not report.args.skip_verify:
        notes.append(
            "- *verified*: the final state (our worker's store on the main topic, the Kafka "
            "Streams app's dump) equals, grain by grain (sequence, timestamp, source, SHA-256 "
            "of the payload), the fold of the whole log read back from the topic "
            "(`benchmarks/verify.py`); a mismatch fails the row."
        )
    return notes
