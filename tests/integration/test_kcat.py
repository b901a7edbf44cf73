"""kcat against the embedded Tansu broker: the commands docs/resources.md gives work, and what it says does
not work (with Debian 12's kcat 1.7.1 on librdkafka 2.0.2) does not. Skipped where kcat is not installed
(`apt-get install kcat`; .ci/run installs it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from driftloop import kafka
from driftloop.broker import EmbeddedBroker

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("kcat") is None, reason="kcat is not installed (apt-get install kcat; .ci/run installs it)"
    ),
]

# librdkafka's protocol of Kafka 0.9: no ApiVersions request, whose answer from Tansu 0.6 librdkafka 2.0.2
# cannot parse (it fails on the answer's tagged fields: "Read underflow").
OLD_PROTOCOL = ["-X", "api.version.request=false", "-X", "broker.version.fallback=0.9.0"]
RECORDS = ['u-42:{"event_id":"e-1","user_id":"u-42"}', 'u-7:{"event_id":"e-2","user_id":"u-7"}']


def _kcat(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["kcat", *args], input=stdin, capture_output=True, text=True, timeout=60)


def _librdkafka_version() -> str:
    return re.search(r"librdkafka ([\d.]+)", _kcat("-V").stdout).group(1)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> str:
    broker = EmbeddedBroker(0, tmp_path_factory.mktemp("kcat-broker"))
    broker.start()
    try:
        kafka.ensure_topics(broker.bootstrap, ["events"], 1)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")},
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        }
        sent = subprocess.run(
            [sys.executable, "-m", "driftloop.cli", "produce", "events", "--key-separator", ":"],
            input="\n".join(RECORDS) + "\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
        yield broker.bootstrap
    finally:
        broker.stop()


def test_the_documented_kcat_commands_read_the_embedded_broker(embedded):
    listing = _kcat("-b", embedded, *OLD_PROTOCOL, "-L")
    assert listing.returncode == 0 and 'topic "events" with 1 partitions' in listing.stdout, listing.stderr
    read = _kcat("-b", embedded, *OLD_PROTOCOL, "-t", "events", "-C", "-o", "0", "-e", "-q", "-K:")
    assert read.returncode == 0, read.stderr
    assert read.stdout.splitlines() == RECORDS


def test_what_the_docs_say_kcat_cannot_do_on_the_embedded_broker(embedded):
    if not _librdkafka_version().startswith("2.0."):
        pytest.skip(f"docs/resources.md describes kcat on librdkafka 2.0.2, not {_librdkafka_version()}")
    # Producing: with ApiVersions, its answer cannot be parsed; without, librdkafka sends the old message
    # format, which Tansu does not read. Nothing arrives either way.
    for options in ([], OLD_PROTOCOL):
        produced = _kcat("-b", embedded, *options, "-t", "events", "-P", "-K:", stdin='u-1:{"event_id":"e-3"}\n')
        assert "Broker transport failure" in produced.stderr, produced.stderr
    plain = _kcat("-b", embedded, "-L", "-m", "5")
    assert plain.returncode != 0 and "ApiVersionRequest failed: Local: Read underflow" in plain.stderr
    # Logical offsets (beginning, end, -N) need ListOffsets v0, whose answer from Tansu it cannot parse.
    beginning = _kcat("-b", embedded, *OLD_PROTOCOL, "-t", "events", "-C", "-o", "beginning", "-e")
    assert "Failed to query logical offset" in beginning.stderr, beginning.stderr
    read = _kcat("-b", embedded, *OLD_PROTOCOL, "-t", "events", "-C", "-o", "0", "-e", "-q", "-K:")
    assert read.stdout.splitlines() == RECORDS  # none of the attempts above wrote anything
