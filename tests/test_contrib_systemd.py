"""The systemd units of contrib/systemd/: each runs `twistd -n --pidfile= <plugin>` in the
foreground with options that twistd and the plugin accept, restarts on failure, runs as a
dedicated user, and is hardened. The command line is parsed by twistd's own ServerOptions
(which hands the plugin part to restmq.tap's Options classes), and, where systemd is
installed, every unit is checked by `systemd-analyze verify`."""
from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from twisted.scripts.twistd import ServerOptions

from restmq.tap.collectd import Options as CollectdOptions
from restmq.tap.restmq import Options
from restmq.tap.syslogd import Options as SyslogdOptions

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
TWISTD = "/opt/restmq/.venv/bin/twistd"
INSTANCE = "8890"   # what %i stands for in the template

# unit file -> (plugin, its Options class, the port it serves)
EXPECTED = {
    "restmq.service": ("restmq", Options, 8888),
    "restmq-collectd.service": ("collectd", CollectdOptions, 8889),
    "restmq-syslogd.service": ("syslogd", SyslogdOptions, 25000),
    "restmq@.service": ("restmq", Options, int(INSTANCE)),
}


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str   # systemd keys are case-sensitive
    assert parser.read(UNITS / name), name
    return parser


def command(name: str) -> list[str]:
    """ExecStart as argv, the template's %i replaced by an instance name."""
    return shlex.split(unit(name)["Service"]["ExecStart"].replace("%i", INSTANCE))


def test_every_unit_is_checked():
    assert sorted(p.name for p in UNITS.glob("*.service")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unit_runs_twistd_in_the_foreground(name):
    plugin = EXPECTED[name][0]
    argv = command(name)
    assert argv[0] == TWISTD
    # journald captures stdout: no daemon, no pid file, no log file
    assert argv[1:4] == ["-n", "--pidfile=", plugin]
    assert not any(a in ("-l", "--logfile") or a.startswith("--logfile=") for a in argv)
    service = unit(name)["Service"]
    assert service["Type"] == "simple"
    assert service["Restart"] == "on-failure"
    assert service["User"] not in ("", "root") and service["Group"] not in ("", "root")
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"),
                       ("ProtectHome", "yes"), ("PrivateTmp", "yes"),
                       ("PrivateDevices", "yes"), ("CapabilityBoundingSet", "")]:
        assert service.get(key) == value, (name, key)
    assert unit(name)["Install"]["WantedBy"] == "multi-user.target"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_unit_options_are_accepted_by_twistd_and_the_plugin(name):
    plugin, options_class, port = EXPECTED[name]
    args = command(name)[1:]
    if "--acl" in args:
        # the unit names /etc/restmq/acl.conf, which the plugin loads while parsing: parse
        # with the project's copy of that file instead
        where = args.index("--acl") + 1
        assert args[where] == "/etc/restmq/acl.conf"
        args[where] = str(ROOT / "acl.conf")
    config = ServerOptions()
    config.parseOptions(args)   # raises UsageError on any option twistd or the plugin refuses
    assert config["nodaemon"] and config["pidfile"] == "" and config["logfile"] is None
    assert config.subCommand == plugin
    assert type(config.subOptions) is options_class
    assert config.subOptions["port"] == port
    assert config.subOptions["listen"] == "127.0.0.1"


def test_template_takes_the_port_from_the_instance_name():
    service = unit("restmq@.service")["Service"]
    assert "--port %i" in service["ExecStart"]
    assert "%i" in unit("restmq@.service")["Unit"]["Description"]


def test_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd): `make test` "
                    "installs it")
    # verify wants an executable ExecStart: point it at this project's twistd
    here = str(Path(sys.executable).with_name("twistd"))
    names = []
    for name in EXPECTED:
        text = (UNITS / name).read_text().replace(TWISTD, here)
        if name.endswith("@.service"):
            name = name.replace("@", f"@{INSTANCE}")
        (tmp_path / name).write_text(text)
        names.append(name)
    out = subprocess.run([analyze, "verify", "--man=no", *names], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values: it reports them as warnings
    assert out.returncode == 0 and out.stderr == "" and out.stdout == "", out.stderr + out.stdout
