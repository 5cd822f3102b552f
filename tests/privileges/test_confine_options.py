"""routes.toml `confine`, and the no-network seccomp program: sans-IO."""

import errno
import socket
import struct

import pytest

from host.privileges import seccomp
from host.privileges.confinement import Confinement
from host.routes.settings import ConfigError, parse_config


def settings(text: str):
    return parse_config(text, "routes.toml").routes


def test_a_confine_table_is_read_with_its_defaults():
    routes = settings('[routes.main]\nconfine = { write = ["/var/spool/x/", "/srv/a"], network = false }\n')
    assert routes["main"].confine == Confinement(read=("/",), write=("/var/spool/x", "/srv/a"),
                                                 network=False)
    routes = settings("[routes.main.confine]\nread = [\"/usr\", \"/lib\"]\n")
    assert routes["main"].confine == Confinement(read=("/usr", "/lib"), write=(), network=True)
    assert settings("[routes.main]\npool = 1\n")["main"].confine is None


@pytest.mark.parametrize("value, message", [
    ('"yes"', "confine must be a table"),
    ('{ writable = ["/x"] }', "unknown key 'writable' in confine"),
    ('{ write = ["relative/x"] }', "confine.write: 'relative/x' is not an absolute path"),
    ('{ read = [1] }', "confine.read must be a list of absolute paths"),
    ('{ network = "off" }', "confine.network must be true or false"),
])
def test_a_bad_confine_names_file_and_line(value, message):
    with pytest.raises(ConfigError) as caught:
        settings(f"default = \"main\"\n\n[routes.main]\npool = 1\nconfine = {value}\n")
    assert caught.value.line == 5
    assert message in caught.value.message
    assert str(caught.value).startswith("routes.toml:5: ")


def test_confine_on_an_in_process_route_is_refused():
    with pytest.raises(ConfigError, match="a Lua route runs in-process, in its own sandbox") as caught:
        settings('[routes.main]\nruntime = "luajit"\nconfine = { network = false }\n')
    assert caught.value.line == 3
    with pytest.raises(ConfigError, match="not tcp"):
        settings('[routes.main]\nruntime = "tcp"\nconfine = {}\n')


def run_filter(program, *, arch, nr, arg0=0):
    """A classic BPF interpreter for the few opcodes the filter uses, over a
    struct seccomp_data (nr, arch, ip, args[6])."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, arg0, 0, 0, 0, 0, 0)
    pc, acc = 0, 0
    for _ in range(len(program)):        # no backward jumps in classic BPF
        code, jt, jf, k = program[pc]
        if code == seccomp.LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == seccomp.JEQ_K:
            pc += 1 + (jt if acc == k else jf)
        elif code == seccomp.JSET_K:
            pc += 1 + (jt if acc & k else jf)
        elif code == seccomp.RET_K:
            return k
        else:
            raise AssertionError(f"unknown opcode {code:#x}")
    raise AssertionError("fell off the end of the program")


@pytest.mark.parametrize("machine", sorted(seccomp.ARCHES))
def test_the_filter_denies_every_socket_but_unix(machine):
    arch, nr_socket, nr_io_uring = seccomp.ARCHES[machine]
    program = seccomp.program(machine)
    deny, allow = seccomp.RET_ERRNO | errno.EACCES, seccomp.RET_ALLOW
    for family in (socket.AF_INET, socket.AF_INET6, socket.AF_PACKET, socket.AF_NETLINK):
        assert run_filter(program, arch=arch, nr=nr_socket, arg0=family) == deny
    assert run_filter(program, arch=arch, nr=nr_socket, arg0=socket.AF_UNIX) == allow
    assert run_filter(program, arch=arch, nr=nr_io_uring) == deny
    assert run_filter(program, arch=arch, nr=0) == allow            # read(2) and the rest
    assert run_filter(program, arch=arch, nr=nr_socket | seccomp.X32_BIT, arg0=socket.AF_UNIX) == deny
    assert run_filter(program, arch=0x40000003, nr=nr_socket, arg0=socket.AF_UNIX) == deny   # i386


def test_a_lua_route_by_its_extension_with_confine_does_not_load(tmp_path, capsys):
    from host.cli import check_routes
    (tmp_path / "main.lua").write_text("function on_request(req) req:reply(200) end\n")
    (tmp_path / "routes.toml").write_text("[routes.main]\nconfine = { network = false }\n")
    assert check_routes(tmp_path) == 1
    out = capsys.readouterr().out
    assert "main.lua: confine applies to the exec, java, perl, python runtimes, not lua54" in out, out
