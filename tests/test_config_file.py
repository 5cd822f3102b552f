"""host/config.py: the TOML configuration of `babelsip run`, sans-IO (text in,
values or a file:line: key error out; no server, no sockets)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from host.cli import build_parser
from host.config import (ConfigFileError, find_line, key_of, load_config, parse_command_line,
                         parse_config, subparser)

BASE = Path("/etc/babelsip")


def run_parser() -> argparse.ArgumentParser:
    return subparser(build_parser(), "run")


def parse(text: str, parser=None) -> dict:
    return parse_config(text, "b.toml", parser or run_parser(), base=BASE)


def error_of(text: str, parser=None) -> ConfigFileError:
    with pytest.raises(ConfigFileError) as caught:
        parse(text, parser)
    return caught.value


def flag_message(*argv) -> str:
    """What argparse says about the same value given as a flag."""
    parser = build_parser()
    messages = []
    parser.error = lambda message: (messages.append(message), (_ for _ in ()).throw(SystemExit(2)))
    run = subparser(parser, "run")
    run.error = parser.error
    with pytest.raises(SystemExit):
        parser.parse_args(["run", *argv])
    return messages[0]


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("dest, key", [
    ("listen", ("server", "listen")),
    ("routes", ("server", "routes")),
    ("workers", ("server", "workers")),
    ("min_expires", ("registrar", "min_expires")),
    ("auth_algorithms", ("auth", "algorithms")),
    ("keepalive", ("nat", "keepalive")),
    ("tcp_max_connections", ("tcp", "max_connections")),
    ("log_format", ("log", "format")),
    ("ctl_socket", ("management", "ctl_socket")),
    ("http_token", ("management", "http_token")),
    ("something_new", (None, "something_new")),
])
def test_each_dest_has_its_table(dest, key):
    assert key_of(dest) == key


def test_the_example_config_sets_every_section():
    example = Path(__file__).resolve().parents[1] / "examples" / "babelsip.toml"
    values = load_config(example, run_parser())
    assert values["listen"] == [("udp", "127.0.0.1", 5060), ("tcp", "127.0.0.1", 5060)]
    assert values["routes"] == example.parent / "quickstart" / "routes"
    assert values["tcp_max_connections"] == 2048 and values["tcp_idle_timeout"] == 300.0
    assert values["auth_algorithms"] == ("MD5",)
    assert values["stun"] is False and values["log_format"] == "text"


def test_a_flag_added_to_run_is_a_key_without_editing_the_loader():
    run = run_parser()
    run.add_argument("--tcp-brand-new-limit", type=int, default=1)
    run.add_argument("--ctl-brand-new-path", metavar="PATH")
    run.add_argument("--brand-new-thing", action="store_true")
    values = parse('brand_new_thing = true\n[tcp]\nbrand_new_limit = 4\n[management]\n'
                   'ctl_brand_new_path = "ctl.sock"\n', run)
    assert values == {"brand_new_thing": True, "tcp_brand_new_limit": 4,
                      "ctl_brand_new_path": str(BASE / "ctl.sock")}


def test_the_workers_and_management_flags_have_their_keys():
    values = parse('[server]\nworkers = 4\n[management]\nctl_socket = "ctl.sock"\n')
    assert values == {"workers": 4, "ctl_socket": str(BASE / "ctl.sock")}


def test_a_key_may_be_written_at_top_level_or_in_its_table():
    assert parse("tcp_max_connections = 5\n") == {"tcp_max_connections": 5}
    assert parse("[tcp]\nmax_connections = 5\n") == {"tcp_max_connections": 5}
    assert parse("tcp.max_connections = 5\n") == {"tcp_max_connections": 5}
    assert parse("tcp = { max_connections = 5 }\n") == {"tcp_max_connections": 5}


# ------------------------------------------------------------------ values


def test_values_go_through_the_flags_own_types():
    values = parse('[server]\nlisten = ["udp:[::1]:5070"]\nrelay_to = "sip:127.0.0.1:5090"\n'
                   'domain = "example.com"\n[auth]\nalgorithms = "md5, sha-256"\n'
                   '[registrar]\nmin_expires = "30"\n[nat]\nstun = true\n')
    assert values["listen"] == [("udp", "::1", 5070)]
    assert values["relay_to"] == "sip:127.0.0.1:5090"
    assert values["domain"] == ["example.com"]          # one value of an append flag: a list of one
    assert values["auth_algorithms"] == ("SHA-256", "MD5")
    assert values["min_expires"] == 30 and values["stun"] is True


@pytest.mark.parametrize("text, line, key, flag", [
    ("[tcp]\nmax_per_source = 0\n", 2, "tcp.max_per_source", ["--tcp-max-per-source", "0"]),
    ("\n\n[registrar]\n# shortest\nmin_expires = -1\n", 5, "registrar.min_expires", ["--min-expires", "-1"]),
    ('[server]\nrelay_to = "http://example.com"\n', 2, "server.relay_to", ["--relay-to", "http://example.com"]),
    ('[server]\nlisten = ["udp:127.0.0.1:5060",\n  "sctp:1.2.3.4:5"]\n', 2, "server.listen",
     ["--listen", "sctp:1.2.3.4:5"]),
    ('tcp.idle_timeout = "soon"\n', 1, "tcp.idle_timeout", ["--tcp-idle-timeout", "soon"]),
    ('[auth]\nalgorithms = "SHA-1"\n', 2, "auth.algorithms", ["--auth-algorithms", "SHA-1"]),
])
def test_a_bad_value_names_file_line_and_key_with_the_flags_message(text, line, key, flag):
    err = error_of(text)
    assert (err.file, err.line, err.key) == ("b.toml", line, key)
    assert err.message in flag_message(*flag, "--relay-to" if flag[0] != "--relay-to" else "--routes", ".")
    assert str(err) == f"b.toml:{line}: {key}: {err.message}"


def test_a_bad_choice_is_named_like_argparse_does():
    err = error_of('[log]\nformat = "xml"\n')
    assert (err.line, err.key) == (2, "log.format")
    assert "invalid choice: 'xml'" in err.message and "'json'" in err.message


@pytest.mark.parametrize("text, expected", [
    ("[nat]\nstun = 1\n", "expected true or false, got an integer"),
    ("[registrar]\nmax_contacts = true\n", "got a boolean"),
    ("[server]\nstore = 6379\n", "expected a string, got an integer"),
    ("[server]\nroutes = [\"a\"]\n", "got an array"),
    ("[server]\nlisten = [[\"udp:127.0.0.1:1\"]]\n", "got an array"),
])
def test_a_value_of_the_wrong_toml_type_is_refused(text, expected):
    err = error_of(text)
    assert expected in err.message and err.line == 2


def test_unknown_keys_and_tables_are_errors_with_their_line():
    err = error_of("[tcp]\nmax_connections = 1\nmax_conections = 2\n")
    assert (err.line, err.key) == (3, "tcp.max_conections")
    assert "unknown key in [tcp]" in err.message and "'max_connections'" in err.message
    err = error_of("[server]\nroutes = 'r'\n\n[sever]\nlisten = []\n")
    assert (err.line, err.key) == (4, "sever") and "unknown table" in err.message and "'server'" in err.message
    err = error_of('log_levl = "info"\n')
    assert (err.line, err.key) == (1, "log_levl") and "did you mean 'log_level'" in err.message
    err = error_of("tcp = 5\n")
    assert (err.line, err.key) == (1, "tcp") and "expected a table" in err.message
    err = error_of("config = 'other.toml'\n")          # the file cannot name another file
    assert err.key == "config" and "unknown key" in err.message
    err = error_of("[registrar]\nmax_connections = 1\n")   # a key of another table
    assert (err.line, err.key) == (2, "registrar.max_connections") and "belongs in [tcp]" in err.message


def test_a_key_set_twice_and_exclusive_keys_are_errors():
    err = error_of("tcp_max_connections = 1\n[tcp]\nmax_connections = 2\n")
    assert err.key in ("tcp.max_connections", "tcp_max_connections") and "set twice" in err.message
    err = error_of('[server]\nrelay_to = "sip:a@b"\n# static\nroutes = "r"\n')
    assert (err.line, err.key) == (4, "server.routes") and "not allowed with server.relay_to" in err.message


@pytest.mark.parametrize("text, line, column", [
    ("[server]\nlisten = [1,\n", 2, None),         # unclosed array: the last line
    ("[server]\nroutes = \"r\"\nstun = tru\n", 3, 8),
    ("[tcp]\n[tcp]\n", 2, 5),
])
def test_a_syntax_error_gives_tomllibs_line_and_column(text, line, column):
    err = error_of(text)
    assert err.line == line and err.message.startswith("TOML syntax: ")
    if column is not None:
        assert str(err).startswith(f"b.toml:{line}:{column}: TOML syntax: ")
    assert "(at " not in err.message


def test_a_file_that_cannot_be_read_or_is_not_utf8(tmp_path):
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_config(tmp_path / "absent.toml", run_parser())
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'[server]\nroutes = "\xff"\n')
    with pytest.raises(ConfigFileError) as caught:
        load_config(bad, run_parser())
    assert caught.value.line == 2 and "UTF-8" in caught.value.message


def test_relative_paths_are_taken_from_the_files_directory(tmp_path):
    (tmp_path / "conf").mkdir()
    config = tmp_path / "conf" / "b.toml"
    config.write_text('[server]\nroutes = "../routes"\n')
    assert load_config(config, run_parser())["routes"] == tmp_path / "conf" / ".." / "routes"
    config.write_text('[server]\nroutes = "/srv/routes"\n')
    assert load_config(config, run_parser())["routes"] == Path("/srv/routes")


# ------------------------------------------------------------------ lines


@pytest.mark.parametrize("text, path, line", [
    ("[tcp]\nmax_connections = 1\n", ("tcp", "max_connections"), 2),
    ("a = 1\n[ tcp ]  # limits\n\n  max_connections=1\n", ("tcp", "max_connections"), 4),
    ("[server]\nmax_connections = 1\n[tcp]\nmax_connections = 2\n", ("tcp", "max_connections"), 4),
    ("tcp.max_connections = 1\n", ("tcp", "max_connections"), 1),
    ('"tcp" . "max_connections" = 1\n', ("tcp", "max_connections"), 1),
    ("# [tcp]\n# max_connections = 1\n[tcp]\nmax_connections = 1\n", ("tcp", "max_connections"), 4),
    ("[tcp]\nx = 1\n", ("tcp",), 1),
    ("\ntcp = { max_connections = 1 }\n", ("tcp", "max_connections"), 2),   # inside an inline table
    ("[tcp]\n", ("server", "routes"), None),
])
def test_find_line(text, path, line):
    assert find_line(text, path) == line


# ------------------------------------------------------------------ with the command line


def command_line(tmp_path, text: str, *argv: str) -> argparse.Namespace:
    config = tmp_path / "babelsip.toml"
    config.write_text(text)
    return parse_command_line(build_parser(), ["run", "--config", str(config), *argv])


def test_flags_override_the_file_and_the_rest_keeps_its_defaults(tmp_path):
    text = ('[server]\nlisten = ["udp:127.0.0.1:5070", "tcp:127.0.0.1:5070"]\nroutes = "routes"\n'
            'domain = ["a.example", "b.example"]\n[registrar]\nmin_expires = 30\nmax_expires = 600\n')
    args = command_line(tmp_path, text)
    assert args.listen == [("udp", "127.0.0.1", 5070), ("tcp", "127.0.0.1", 5070)]
    assert args.routes == tmp_path / "routes" and args.min_expires == 30 and args.max_expires == 600
    assert args.domain == ["a.example", "b.example"] and args.default_expires == 3600  # not in the file
    args = command_line(tmp_path, text, "--listen", "udp:127.0.0.1:6000", "--min-expires", "90",
                        "--domain", "c.example")
    assert args.listen == [("udp", "127.0.0.1", 6000)]        # a list flag replaces the file's list
    assert args.domain == ["c.example"]
    assert args.min_expires == 90 and args.max_expires == 600
    args = command_line(tmp_path, text, "--relay-to", "sip:127.0.0.1:5090")
    assert args.relay_to == "sip:127.0.0.1:5090" and args.routes is None   # the exclusive member wins


def test_a_flag_equal_to_its_default_still_overrides_the_file(tmp_path):
    args = command_line(tmp_path, '[log]\nlevel = "debug"\nformat = "json"\n', "--log-level", "info")
    assert args.log_level == "info" and args.log_format == "json"


def test_a_bad_file_stops_run_with_exit_2_and_the_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        command_line(tmp_path, "[tcp]\nmax_per_source = 0\n")
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == \
        f"babelsip: error: {tmp_path / 'babelsip.toml'}:2: tcp.max_per_source: '0': must be greater than 0"


def test_check_takes_the_files_routes_unless_given(tmp_path):
    config = tmp_path / "babelsip.toml"
    config.write_text('[server]\nroutes = "r"\n[registrar]\nmin_expires = 5\n')
    args = parse_command_line(build_parser(), ["check", "--config", str(config)])
    assert args.routes == tmp_path / "r" and args.log_level == "critical"
    assert args.config_values["min_expires"] == 5
    args = parse_command_line(build_parser(), ["check", "--config", str(config), "--routes", "elsewhere"])
    assert args.routes == Path("elsewhere")


def test_tls_pins_are_a_list_key_checked_like_the_flag():
    fp = "ab" * 32
    values = parse(f'tls_pin = ["trunk.example=sha256:{fp}", "10.0.0.1=SHA256:{fp.upper()}"]\n')
    assert [(p.host, p.fingerprint.hex()) for p in values["tls_pin"]] == [("trunk.example", fp), ("10.0.0.1", fp)]
    err = error_of('tls_pin = ["trunk.example=md5:00"]\n')
    assert err.line == 1 and err.key == "tls_pin" and "only sha256:HEX fingerprints" in err.message
