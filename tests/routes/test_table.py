from pathlib import Path

import pytest

from host.routes.settings import ConfigError, Fallback, RouteSettings, load_config, parse_config
from host.routes.table import Match, RouteTable
from host.supervision.policy import RestartPolicy

KNOWN = {"main", "registrar", "acme", "v6", "tenant"}


def event(**kw):
    base = {"method": "INVITE", "ruri_user": "alice", "ruri_host": "example.com",
            "source_ip": "192.0.2.1", "headers": []}
    base.update(kw)
    return base


def cfg(text, known=KNOWN, **kw):
    return parse_config(text, "routes.toml", known_routes=known, **kw)


TABLE = '''
default = "Main"

[[match]]
route = "registrar"
method = ["REGISTER", "OPTIONS"]

[[match]]
route = "acme"
ruri_host = '(^|\\.)acme\\.example$'
ruri_user = '^\\+33'

[[match]]
route = "v6"
source = ["2001:db8::/32", "10.0.0.0/8"]

[[match]]
route = "tenant"
header = "X-Tenant"
header_regex = { name = "x-tenant", pattern = "^acme$" }
'''


def test_first_match_wins_then_default():
    table = cfg(TABLE).table
    assert table.default == "main"                     # names are case-insensitive
    assert table.select(event(method="REGISTER")) == "registrar"
    assert table.select(event(method="OPTIONS", ruri_host="sip.acme.example")) == "registrar"
    assert table.select(event(ruri_host="sip.acme.example", ruri_user="+3312")) == "acme"
    assert table.select(event(ruri_host="sip.acme.example", ruri_user="+4412")) == "main"  # AND
    assert table.select(event(ruri_host="notacme.example", ruri_user="+3312")) == "main"
    assert table.select(event()) == "main"


def test_method_is_case_sensitive():
    assert cfg(TABLE).table.select(event(method="register")) == "main"


def test_missing_ruri_user_matches_against_empty_string():
    table = cfg('[[match]]\nroute = "acme"\nruri_user = "^$"\n').table
    assert table.select(event(ruri_user=None)) == "acme"
    assert table.select(event(ruri_user="bob")) == "main"


def test_source_cidr_v4_and_v6():
    table = cfg(TABLE).table
    assert table.select(event(source_ip="2001:db8::5")) == "v6"
    assert table.select(event(source_ip="[2001:db8::5]")) == "v6"
    assert table.select(event(source_ip="10.20.30.40")) == "v6"
    assert table.select(event(source_ip="2001:db9::5")) == "main"
    assert table.select(event(source_ip="11.0.0.1")) == "main"
    assert table.select(event(source_ip="not-an-ip")) == "main"
    assert table.select(event(source_ip=None)) == "main"


def test_header_presence_and_regex_are_case_insensitive_on_names():
    table = cfg(TABLE).table
    assert table.select(event(headers=[["x-tenant", "acme"]])) == "tenant"
    assert table.select(event(headers=[["X-Tenant", "other"], ["X-TENANT", "acme"]])) == "tenant"
    assert table.select(event(headers=[["X-Tenant", "other"]])) == "main"
    assert table.select(event(headers=[["X-Other", "acme"]])) == "main"


def test_header_list_needs_all_present():
    table = cfg('[[match]]\nroute = "tenant"\nheader = ["X-A", "X-B"]\n').table
    assert table.select(event(headers=[["X-A", "1"], ["x-b", "2"]])) == "tenant"
    assert table.select(event(headers=[["X-A", "1"]])) == "main"


def test_empty_table_selects_default():
    assert RouteTable().select(event()) == "main"
    assert RouteTable((Match("x"),), "y").select({}) == "x"   # a rule without conditions matches all


def test_no_file_means_main_handles_everything(tmp_path):
    config = load_config(tmp_path)
    assert config.file is None
    assert config.table.select(event(method="REGISTER")) == "main"
    assert config.settings("main") == RouteSettings()


def test_route_settings_parse():
    config = cfg('''
[routes.Main]
runtime = "luajit"
deadline = 0.25
fallback = { code = 503, retry_after = 30 }
restart = { intensity = 2, period = 4 }
pool = 4
memory_mb = 16
options = { jit = false, paths = ["a", "b"] }

[routes.registrar]
fallback = { relay = "sip:backup@192.0.2.9" }

[routes.acme]
fallback = 480
shared_store = true
''')
    main = config.settings("main")
    assert (main.runtime, main.deadline, main.pool, main.memory_mb) == ("luajit", 0.25, 4, 16)
    assert main.restart == RestartPolicy(intensity=2, period=4, retry_every=30.0)
    assert main.options == (("jit", False), ("paths", ("a", "b")))
    d = main.fallback.decision()
    assert (d.verb, d.code, d.reason, d.headers) == ("reply", 503, "Service Unavailable", [("Retry-After", "30")])
    d = config.settings("registrar").fallback.decision()
    assert (d.verb, d.targets) == ("relay", ["sip:backup@192.0.2.9"])
    d = config.settings("acme").fallback.decision()
    assert (d.code, d.reason, d.headers) == (480, "Temporarily Unavailable", [])
    assert config.settings("tenant") == RouteSettings()
    assert config.settings("acme").shared_store is True
    assert main.shared_store is False          # per-route keys unless asked


def test_default_fallback_is_500_and_fresh_each_time():
    f = Fallback()
    a, b = f.decision(), f.decision()
    assert (a.verb, a.code, a.reason) == ("reply", 500, "Server Internal Error")
    a.headers.append(("X", "y"))
    assert b.headers == []


def test_defaults_apply_to_unconfigured_routes():
    defaults = RouteSettings(deadline=2.0, fallback=Fallback(code=503, reason="Service Unavailable"))
    config = cfg('[routes.acme]\npool = 3\n', defaults=defaults)
    assert config.settings("main") is defaults
    assert config.settings("acme").deadline == 2.0 and config.settings("acme").pool == 3


def error_of(text, known=KNOWN):
    with pytest.raises(ConfigError) as info:
        cfg(text, known)
    return info.value


def test_toml_syntax_error_has_line():
    err = error_of('default = "main"\n\n[[match]]\nroute = \n')
    assert err.line == 4 and err.file == "routes.toml"
    assert "routes.toml:4" in str(err)


@pytest.mark.parametrize("text, line, words", [
    ('default = "main"\nbogus = 1\n', 2, "unknown key 'bogus'"),
    ('[[match]]\nroute = "acme"\n\n[[match]]\nroute = "acme"\nmethd = "INVITE"\n', 6, "unknown key 'methd'"),
    ('[[match]]\nroute = "acme"\nruri_user = "(unclosed"\n', 3, "bad regex"),
    ('[[match]]\nroute = "acme"\nsource = "10.0.0.0/33"\n', 3, "bad CIDR"),
    ('[[match]]\nroute = "acme"\nsource = ["10.0.0.0/8", "fe80::/129"]\n', 3, "bad CIDR"),
    ('[[match]]\nroute = "nosuch"\n', 2, "'nosuch' has no file"),
    ('[[match]]\nmethod = "INVITE"\n', 1, "needs route"),
    ('default = "nosuch"\n', 1, "has no file"),
    ('[routes.acme]\ndeadline = 0\n', 2, "deadline"),
    ('[routes.acme]\nruntime = "cobol"\n', 2, "unknown runtime"),
    ('[routes.acme]\npool = 1\n\n[routes.nosuch]\npool = 2\n', 4, "has no file"),
    ('[routes.acme]\nfallback = { code = 200 }\n', 2, "300-699"),
    ('[routes.acme]\nfallback = { relay = "sip:x@y", code = 503 }\n', 2, "cannot be combined"),
    ('[routes.acme]\nfallback = { code = 503, retry_after = -1 }\n', 2, "retry_after"),
    ('[routes.acme]\nrestart = { intensity = -1 }\n', 2, "intensity"),
    ('[routes.acme]\nrestart = { burst = 1 }\n', 2, "unknown key 'burst'"),
    ('[routes.acme]\n\n[routes.acme.fallback]\ncode = 1\n', 3, "300-699"),
    ('[routes]\nacme = { deadline = -1 }\n', 2, "deadline"),
    ('[[match]]\nroute = "acme"\nheader_regex = { name = "X", pattern = "[" }\n', 3, "bad regex"),
    ('[[match]]\nroute = "acme"\nmethod = []\n', 3, "non-empty list"),
    ('[routes.acme]\n[routes.ACME]\n', 2, "configured twice"),
    ('[routes.acme]\npool = 2\nshared_store = "yes"\n', 3, "shared_store must be true or false, got 'yes'"),
    ('[routes.acme]\nshared_store = 1\n', 2, "shared_store must be true or false"),
])
def test_semantic_errors_name_the_line(text, line, words):
    err = error_of(text)
    assert words in err.message
    assert err.line == line, str(err)


def test_references_are_only_checked_when_known_routes_given():
    config = parse_config('[[match]]\nroute = "later"\n', "routes.toml")
    assert config.table.select(event()) == "later"


def test_load_config_reads_the_folder(tmp_path: Path):
    (tmp_path / "routes.toml").write_text('[[match]]\nroute = "x"\nmethod = "BYE"\n')
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path, known_routes={"main"})
    assert info.value.file == str(tmp_path / "routes.toml") and info.value.line == 2
    assert load_config(tmp_path, known_routes={"main", "x"}).table.select(event(method="BYE")) == "x"
