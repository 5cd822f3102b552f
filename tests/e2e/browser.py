"""A browser SIP client for the end-to-end tests: JsSIP (from npm, in
tests/e2e/web/node_modules, installed by `make test-deps`) on a page served
over HTTP on 127.0.0.1, run by headless Chromium.

No remote-debugging protocol: the page runs its scenario itself and reports
every step (registered, confirmed, ended, errors) by POSTing JSON to the
test's HTTP server, which queues them for the test to wait on. JsSIP ships
CommonJS files only; `cjs_bundle` wraps them into one script with a
30-line `require` so the page needs no bundler.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WEB = Path(__file__).resolve().with_name("web")
NODE_MODULES = WEB / "node_modules"

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-default-apps", "--mute-audio",
                  # getUserMedia without a device or a permission prompt.
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]

# Chromium's start on a busy 2-core machine (the rest of the suite beside
# it) took 25 s once: a page's first report may wait this long; the SIP
# steps after it keep their own, shorter deadlines.
START_TIMEOUT = 90


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def jssip_installed() -> bool:
    return (NODE_MODULES / "jssip" / "package.json").exists()


def _package_main(pkg_dir: Path) -> str:
    meta = json.loads((pkg_dir / "package.json").read_text())
    browser = meta.get("browser")
    return browser if isinstance(browser, str) else meta.get("main", "index.js")


def _resolve_file(files: dict, base: str) -> str:
    for candidate in (base, base + ".js", base + ".json", base.rstrip("/") + "/index.js"):
        if candidate in files:
            return candidate
    raise FileNotFoundError(base)


def cjs_bundle(node_modules: Path = NODE_MODULES, entry: str = "jssip", global_name: str = "JsSIP") -> str:
    """Every package under node_modules as one browser script defining
    window.<global_name> = require(entry)."""
    files = {}
    for path in sorted(node_modules.rglob("*")):
        name = path.relative_to(node_modules).as_posix()
        if path.suffix in (".js", ".json") and path.is_file() and not name.startswith("."):
            files[name] = path.read_text(encoding="utf-8")
    mains = {}
    for pkg in sorted(p for p in node_modules.iterdir() if (p / "package.json").exists()):
        main = os.path.normpath(f"{pkg.name}/{_package_main(pkg)}")
        mains[pkg.name] = _resolve_file(files, main)
    defs = []
    for name, text in files.items():
        if text.startswith("#!"):        # a command-line script of a package: never required
            continue
        body = f"module.exports = {text};" if name.endswith(".json") else text
        defs.append(f"{json.dumps(name)}: function (require, module, exports, process) {{\n{body}\n}}")
    return LOADER.replace("/*DEFS*/", ",\n".join(defs)).replace("/*MAINS*/", json.dumps(mains)) \
        .replace("/*ENTRY*/", json.dumps(entry)).replace("/*GLOBAL*/", json.dumps(global_name))


LOADER = """(function () {
  var defs = {/*DEFS*/};
  var mains = /*MAINS*/;
  var cache = {};
  var process = {env: {}, browser: true, argv: [], version: ''};
  function normalize(path) {
    var out = [];
    path.split('/').forEach(function (part) {
      if (part === '..') out.pop(); else if (part !== '.' && part !== '') out.push(part);
    });
    return out.join('/');
  }
  function resolve(from, name) {
    if (name[0] !== '.') {
      if (mains[name]) return mains[name];
      throw new Error('bundle: no package ' + name + ' (required from ' + from + ')');
    }
    var base = normalize(from.slice(0, from.lastIndexOf('/')) + '/' + name);
    var tries = [base, base + '.js', base + '.json', base + '/index.js'];
    for (var i = 0; i < tries.length; i++) if (defs[tries[i]]) return tries[i];
    throw new Error('bundle: cannot find ' + name + ' from ' + from);
  }
  function load(path) {
    if (cache[path]) return cache[path].exports;
    var module = {exports: {}};
    cache[path] = module;
    defs[path].call(module.exports, function (name) { return load(resolve(path, name)); },
                    module, module.exports, process);
    return module.exports;
  }
  window[/*GLOBAL*/] = load(mains[/*ENTRY*/]);
})();
"""


class PageServer:
    """Serves `pages` ({path: (content type, bytes)}) on 127.0.0.1 and
    queues the JSON bodies POSTed to /report."""

    def __init__(self, pages: dict[str, tuple[str, bytes]]):
        self.pages = pages
        self.reports: queue.Queue = queue.Queue()
        reports = self.reports

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                page = pages.get(self.path.split("?", 1)[0])
                if page is None:
                    self.send_error(404)
                    return
                kind, body = page
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(min(length, 1 << 20))
                try:
                    reports.put(json.loads(body))
                except ValueError:
                    reports.put({"event": "bad-report", "detail": body[:200].decode(errors="replace")})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def wait_for(self, event: str, timeout: float) -> list[dict]:
        """Every report up to and including the first `event` one; raises
        AssertionError (with what was reported) at the deadline."""
        seen = []
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event!r} report within {timeout:g}s; reports: {seen}")
            try:
                report = self.reports.get(timeout=left)
            except queue.Empty:
                continue
            seen.append(report)
            if report.get("event") == event:
                return seen


class Chromium:
    """Headless Chromium showing one URL, in its own process group and
    profile directory; stopped (TERM, then KILL of the group) on exit."""

    def __init__(self, url: str, profile: Path, *, trust_any_certificate: bool = False):
        profile.mkdir(parents=True, exist_ok=True)
        self.log_path = profile / "chromium.log"
        self._log = open(self.log_path, "wb")
        # wss: to a certificate the test made: a browser has no flag to add
        # one CA, so certificate errors are ignored for that profile.
        extra = ["--ignore-certificate-errors"] if trust_any_certificate else []
        self.proc = subprocess.Popen([chromium_binary(), *CHROMIUM_FLAGS, *extra, f"--user-data-dir={profile}", url],
                                     stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self._log.close()
