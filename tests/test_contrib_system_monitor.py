"""contrib/system-monitor: producer.py samples this machine with psutil and posts JSON to a
queue; consumer.py consumes it live and prints a WARNING for each figure above the thresholds
of the config file. Both run as subprocesses against a live server."""
from __future__ import annotations

import configparser
import re
import socket

import pytest

from tests.test_examples import ROOT, Program, consumers, run

MONITOR = ROOT / "contrib" / "system-monitor"

# memory use is always above 0 %, cpu use never above 100 %, load never above 1000 per cpu;
# swap is left out: a missing threshold is not checked
CONFIG = """[restmq]
url = {url}
queue = monitor
[producer]
interval = 60
[thresholds]
cpu = 100
memory = 0
load = 1000
"""


@pytest.fixture(autouse=True)
def _psutil():
    try:
        import psutil  # noqa: F401
    except ImportError:
        pytest.fail("psutil is missing: `make test` installs it into .venv")


def test_shipped_config_has_every_setting():
    config = configparser.ConfigParser()
    assert config.read(MONITOR / "system-monitor.conf")
    assert config.get("restmq", "url") == "http://127.0.0.1:8888"
    assert config.get("restmq", "queue")
    assert config.getfloat("producer", "interval") > 0
    assert {k: config.getfloat("thresholds", k) for k in config["thresholds"]}.keys() == {
        "cpu", "memory", "swap", "load"}


def test_producer_samples_reach_the_consumer_with_warnings(H, redis, tmp_path):
    config = tmp_path / "monitor.conf"
    config.write_text(CONFIG.format(url=H))
    host = socket.gethostname()
    with Program(MONITOR / "consumer.py", "--config", str(config), "--count", "2") as consumer:
        consumers(redis, "monitor")
        # --interval on the command line wins over the file's 60 s
        status, out, err = run(MONITOR / "producer.py", "--config", str(config),
                               "--interval", "0.2", "--count", "2")
        assert (status, err) == (0, "")
        figures = r"cpu [\d.]+% memory [\d.]+% swap [\d.]+% load [\d.]+"
        sent = out.splitlines()
        assert len(sent) == 2
        for n, line in enumerate(sent, 1):
            assert re.fullmatch(rf"monitor:{n}: {figures}", line), line
        status, out, err = consumer.finish()
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"watching {H}/c/monitor"
    samples = [line for line in lines[1:] if not line.startswith("WARNING")]
    warnings = [line for line in lines[1:] if line.startswith("WARNING")]
    assert [re.fullmatch(rf"monitor:(\d) {re.escape(host)}: {figures}", line).group(1)
            for line in samples] == ["1", "2"]
    assert len(warnings) == 2
    for line in warnings:
        assert re.fullmatch(rf"WARNING {re.escape(host)}: memory [\d.]+% is above 0%", line), line
    # each sample's warnings follow its line
    assert [line.startswith("WARNING") for line in lines[1:]] == [False, True, False, True]
    assert redis("LLEN", "monitor:queue") == 0


def test_consumer_reports_a_message_that_is_not_a_sample(H, redis, tmp_path):
    config = tmp_path / "monitor.conf"
    config.write_text(CONFIG.format(url=H))
    with Program(MONITOR / "consumer.py", "--config", str(config), "--count", "2") as consumer:
        consumers(redis, "monitor")
        for value in ("not json", '{"host": "h", "cpu": 1, "memory": 2, "swap": 0, '
                                  '"load": [0.5, 0.4, 0.3], "cpus": 2}'):
            assert run(ROOT / "examples" / "test_request.py", "--url", H, "--queue", "monitor",
                       "--value", value)[0] == 0
        status, out, err = consumer.finish()
    assert (status, err) == (0, "")
    assert out.splitlines()[1:] == [
        "monitor:1: not a sample: not json",
        "monitor:2 h: cpu 1% memory 2% swap 0% load 0.5",
        "WARNING h: memory 2% is above 0%"]


def test_missing_config_is_a_clear_error(tmp_path):
    status, out, err = run(MONITOR / "consumer.py", "--config", str(tmp_path / "nope.conf"))
    assert status == 1 and f"cannot read the config file {tmp_path}/nope.conf" in err
