#!/usr/bin/env python3
"""Run a worker against every conformance transcript (sdk/conformance/README.md).

    run.py --sdk python                      # a known SDK, its routes under routes/<sdk>/
    run.py --routes DIR -- CMD ... {route}   # any worker; {route} = DIR/<route name>.*
    run.py -- ./my-worker                    # one executable for all transcripts: it
                                             # picks its behaviour from hello.route

Each transcript line is one of
    {"send": MSG}                    write MSG to the worker's stdin
    {"expect": PATTERN}              the worker's next message (log lines skipped) matches
    {"expect_any_order": [P, ...]}   the next len(P) messages match these, in any order
    {"expect_exit": 0 | "nonzero"}   stdout closes and the process exits so
Matching: every key of the pattern must be in the message with an equal value;
"*" matches any value; a string "$name" binds on first use and is substituted in
later "send" lines; "hooks" compares as a set; for "decision" messages "verbs"
compares by meaning (both sides replayed through host.routes.verbs.Recorder),
and a trailing run of nulls in a call's "args" is ignored.
Exit status 0 when every transcript passes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from host.routes.verbs import Recorder, VerbError  # noqa: E402

TIMEOUT = 10.0  # seconds per expectation; generous for a JVM's first start

SDKS = {
    "python": ([sys.executable, "-m", "babelsip_sdk.runner", "{route}"], HERE / "routes" / "python",
               {"PYTHONPATH": str(REPO / "sdk" / "python")}),
    "perl": (["perl", f"-I{REPO / 'sdk' / 'perl'}", str(REPO / "sdk" / "perl" / "runner.pl"), "{route}"],
             HERE / "routes" / "perl", {}),
    "java": ([str(REPO / "sdk" / "java" / "babelsip-java"), "{route}"], HERE / "routes" / "java", {}),
    "node": ([str(HERE / "workers" / "conformance.js")], None, {}),
}


class Mismatch(Exception):
    pass


def _trim_nulls(args):
    args = list(args)
    while args and args[-1] is None:
        args.pop()
    return args


def _decision(hook, verbs):
    rec = Recorder(hook)
    for call in verbs:
        rec.apply(call[0], list(call[1:]))
    d = rec.decision
    d.vars = None
    return d


def match(pattern, actual, binds, path="", hooks_of=None):
    """Raise Mismatch unless `actual` matches `pattern` (binding $names)."""
    if isinstance(pattern, str) and pattern == "*":
        return
    if isinstance(pattern, str) and pattern.startswith("$"):
        if pattern in binds:
            if binds[pattern] != actual:
                raise Mismatch(f"{path}: {actual!r} != bound {pattern}={binds[pattern]!r}")
        else:
            binds[pattern] = actual
        return
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            raise Mismatch(f"{path}: expected an object, got {actual!r}")
        for key, want in pattern.items():
            if key not in actual:
                raise Mismatch(f"{path}.{key}: missing in {actual!r}")
            got = actual[key]
            if key == "hooks" and isinstance(want, list) and isinstance(got, list):
                want, got = sorted(want), sorted(got)
            if key == "args" and pattern.get("type") == "call" and isinstance(got, list):
                got = _trim_nulls(got)
            if key == "verbs" and pattern.get("type") == "decision" and hooks_of is not None:
                hook = hooks_of.get(actual.get("id"), "on_request")
                try:
                    ok = _decision(hook, want) == _decision(hook, got)
                except (VerbError, TypeError, IndexError, KeyError) as e:
                    raise Mismatch(f"{path}.verbs: {got!r} is not a valid decision: {e}") from None
                if not ok:
                    raise Mismatch(f"{path}.verbs: expected {want!r}, got {got!r}")
                continue
            match(want, got, binds, f"{path}.{key}", hooks_of)
        return
    if isinstance(pattern, list):
        if not isinstance(actual, list) or len(actual) != len(pattern):
            raise Mismatch(f"{path}: expected {pattern!r}, got {actual!r}")
        for i, (p, a) in enumerate(zip(pattern, actual)):
            match(p, a, binds, f"{path}[{i}]", hooks_of)
        return
    if pattern != actual or type(pattern) is bool and type(actual) is not bool:
        raise Mismatch(f"{path}: expected {pattern!r}, got {actual!r}")


def substitute(value, binds):
    if isinstance(value, str) and value.startswith("$") and value in binds:
        return binds[value]
    if isinstance(value, dict):
        return {k: substitute(v, binds) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, binds) for v in value]
    return value


def find_route(routes: Path, name: str) -> Path:
    hits = [p for p in routes.iterdir() if p.stem.lower() == name.lower()]
    if len(hits) != 1:
        raise Mismatch(f"need exactly one route file named {name!r} in {routes}, found {len(hits)}")
    return hits[0]


class Worker:
    def __init__(self, argv, env):
        self.stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, env=env)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, msg):
        try:
            self.proc.stdin.write(json.dumps(msg, ensure_ascii=False).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the worker already exited; the next expectation says whether that is right

    def next_message(self):
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                raise Mismatch(f"no message within {TIMEOUT:g} s") from None
            if line is None:
                raise Mismatch("worker closed stdout")
            try:
                msg = json.loads(line)
            except ValueError:
                raise Mismatch(f"worker wrote a line that is not JSON: {line[:200]!r}") from None
            if not isinstance(msg, dict):
                raise Mismatch(f"worker wrote a non-object: {line[:200]!r}")
            if msg.get("type") != "log":
                return msg

    def wait_exit(self, want):
        try:
            line = self.lines.get(timeout=TIMEOUT)
        except queue.Empty:
            raise Mismatch("worker did not close stdout") from None
        if line is not None:
            raise Mismatch(f"expected exit, worker wrote {line[:200]!r}")
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Mismatch("worker did not exit") from None
        if want == "nonzero" and code == 0 or want != "nonzero" and code != want:
            raise Mismatch(f"exit status {code}, expected {want}")

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.stderr.seek(0)
        text = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        return text


def run_transcript(path: Path, argv: list[str], routes: Path | None, env: dict) -> tuple[bool, str]:
    lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    meta, steps = lines[0], lines[1:]
    if "{route}" in " ".join(argv):
        if routes is None:
            return False, "command has {route} but no routes directory"
        try:
            route_file = str(find_route(routes, meta["route"]))
        except Mismatch as e:
            return False, str(e)
        argv = [a.replace("{route}", route_file) for a in argv]
    worker = Worker(argv, env)
    binds: dict = {}
    hooks_of: dict = {}
    step = 0
    try:
        for step, line in enumerate(steps, 2):
            if "send" in line:
                msg = substitute(line["send"], binds)
                if msg.get("type") == "event":
                    hooks_of[msg.get("id")] = msg.get("hook")
                worker.send(msg)
            elif "expect" in line:
                match(line["expect"], worker.next_message(), binds, "", hooks_of)
            elif "expect_any_order" in line:
                left = list(line["expect_any_order"])
                while left:
                    msg = worker.next_message()
                    for i, pattern in enumerate(left):
                        trial = dict(binds)
                        try:
                            match(pattern, msg, trial, "", hooks_of)
                        except Mismatch:
                            continue
                        binds.update(trial)
                        del left[i]
                        break
                    else:
                        raise Mismatch(f"unexpected message {msg!r}; still expecting {left!r}")
            elif "expect_exit" in line:
                worker.wait_exit(line["expect_exit"])
            else:
                raise Mismatch(f"unknown transcript line {line!r}")
    except Mismatch as e:
        stderr = worker.close()
        tail = ("\n    stderr: " + stderr.strip()[-800:]) if stderr.strip() else ""
        return False, f"line {step}: {e}{tail}"
    worker.close()
    return True, meta.get("doc", "")


def transcripts() -> list[Path]:
    return sorted((HERE / "transcripts").glob("*.jsonl"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sdk", choices=sorted(SDKS))
    parser.add_argument("--routes", type=Path, help="directory with one file per conformance route")
    parser.add_argument("--only", action="append", help="run only these transcripts (by name)")
    parser.add_argument("command", nargs="*", help="worker command ({route} = route file)")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    if args.sdk:
        command, routes, extra = SDKS[args.sdk]
        env.update(extra)
    else:
        command, routes = args.command, args.routes
    if args.routes:
        routes = args.routes
    if not command:
        parser.error("give --sdk or a worker command")
    failed = 0
    for path in transcripts():
        if args.only and path.stem not in args.only:
            continue
        ok, text = run_transcript(path, list(command), routes, env)
        failed += not ok
        print(f"{'PASS' if ok else 'FAIL'} {path.stem}: {text}")
    print(f"{'all passed' if not failed else f'{failed} failed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
