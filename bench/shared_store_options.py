"""Which embedded store can `babelsip run --workers N` share between its core
processes? Measures the candidates from 1 and from 2 worker processes at once.

Every worker is a separate Python process (this script run with --worker),
calling the store the way a core's trio task would: one operation after the
other, awaited, for --duration seconds per operation kind. All workers of a
run start each operation kind at the same wall-clock instant, so with 2
workers they contend for the same keys on this 2-core machine.

Operations (one "op" is what is timed and counted):
  kv        script key/value: get(key) then set(key, small JSON dict, ttl 60)
            on one of --keys shared keys (random). One op = the get + the set.
  bindings  the REGISTER path: an atomic read-modify-write of one AoR (random
            among --aors shared AoRs) holding 3 host.sip.registrar.Binding of
            ~700 bytes of JSON each: read, decode to Binding objects, apply a
            pure Python function (bump the first binding's CSeq, refresh its
            expiry), encode, write -- atomically with respect to the other
            worker. Checked: afterwards the sum of the first bindings' CSeqs
            must equal the number of ops done by all workers (no lost update).
  advance   the digest nonce-count rule: raise a counter (one of --keys) to a
            value if higher, atomically (compare-and-set). Each worker presents
            1, 2, 3... per key, so 2 workers present the same values: checked
            that no (key, value) is accepted twice.

Candidates:
  sqlite         stdlib sqlite3, WAL, synchronous=NORMAL, file in /dev/shm, one
                 connection per worker, called directly from the trio task (it
                 blocks the event loop, waits for the other's lock included:
                 busy_timeout). bindings = BEGIN IMMEDIATE; SELECT; change();
                 INSERT OR REPLACE; COMMIT. advance = one UPSERT statement with
                 a WHERE (its own write transaction, atomic).
  sqlite-thread  the same, each operation (a whole transaction) in
                 trio.to_thread.run_sync: the event loop is not blocked.
  lmdb           py-lmdb (if importable), one Environment per worker, on
                 /dev/shm, sync=False; reads in read transactions, bindings and
                 advance in a write transaction (LMDB's cross-process writer
                 lock), blocking like sqlite.
  parent         a store owned by a parent process: a trio server on a unix
                 stream socket in front of host.storage.memory.MemoryStore,
                 line-delimited orjson requests [id, op, args...] -> [id,
                 result]; workers are trio clients (one connection each, a
                 reader task matching answers to requests), 1 request in flight.
                 bindings = optimistic versions: `bget` returns (version,
                 bindings), the worker applies its function, `bput` stores
                 only if the version is unchanged, else it retries (2 round
                 trips; works for any `change` closure, as Store.update_bindings
                 takes). bindings-apply = one `bapply` round trip running a
                 pure function registered in the server by name (what the
                 registrar's rule would need to be: code the parent imports).
  parent-x8      the same server, 8 trio tasks per worker sharing its one
                 connection (pipelined requests; latency includes queueing).
  redis          host.storage.redis.RedisStore (coredis, the real code: WATCH/
                 MULTI for bindings, Lua for advance) on a redis-server child
                 on a free 127.0.0.1 port (--save '' --appendonly no).

Figures: ops/s of each process and in total (ops completed in the window /
window); p50/p99/max latency of one op in microseconds over all processes (max shows
a starved process: its few ops hide in the others' percentiles); CPU
microseconds per op = (user+system CPU of every worker during its window, from
os.times() in the worker, + the server's -- parent store or redis-server --
from /proc/PID/stat over the same window) / total ops. So "cpu/op" is the
machine's cost of one op, whoever pays it; "srv%" is the server's share.

A short crash probe follows (--no-crash to skip): a process starts a write
transaction (sqlite BEGIN IMMEDIATE + write; lmdb write txn + put), is killed
with SIGKILL inside it, then another process writes: how long it waits and
whether the dead process's uncommitted write is visible.

  .venv/bin/python bench/shared_store_options.py                  # all, ~2 min
  .venv/bin/python bench/shared_store_options.py --only sqlite,parent --duration 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CANDIDATES = ["sqlite", "sqlite-thread", "lmdb", "parent", "parent-x8", "redis"]
OPS = ["kv", "bindings", "advance"]
PARENT_OPS = OPS + ["bindings-apply"]
GAP = 0.7          # seconds between two op windows (worker 0 checks meanwhile)
SETUP = 1.8        # seconds from spawning the workers to the first window
TICK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- data

def make_bindings(aor: str, worker: str):
    """3 bindings of ~700 bytes of JSON each, as a registrar would keep them."""
    from host.sip.registrar import Binding
    now = time.time()
    user = aor.split(":")[1].split("@")[0]
    out = []
    for i in range(3):
        out.append(Binding(
            contact=f"sip:{user}@198.51.100.{10 + i}:{50000 + i};transport=tcp;ob;rinstance=9f8e7d6c5b4a{i:04d}",
            expires_at=now + 3600, q=1.0 - i / 10,
            call_id=f"{'a1b2c3d4' * 9}-{i}@198.51.100.{10 + i}", cseq=1 if i == 0 else 7,
            source=("tcp", f"198.51.100.{10 + i}", 50000 + i),
            path=(f"<sip:edge-proxy-{i}.example.net:5061;transport=tls;lr;ob;flow-token={'Zm9v' * 12}>",
                  f"<sip:core-{i}.example.net;lr;r2=on;ftag={'x7' * 20}>"),
            user_agent=f"Linphone-Desktop/5.2.{i} (Ubuntu 24.04 LTS, Qt 5.15.13) LinphoneCore/5.3.{i}",
            instance=f"urn:uuid:{'0123abcd' * 4}{i:04d}", reg_id=1 + i, core=worker,
            registered_at=now))
    return out


def change_for(aor: str, worker: str):
    """The pure `change` of update_bindings for one REGISTER: (new list, result).
    An absent AoR gets its 3 bindings; otherwise the first one's CSeq is bumped
    and its expiry refreshed."""
    def change(current):
        if not current:
            return make_bindings(aor, worker), 1
        b0 = current[0]
        b0 = dataclasses.replace(b0, cseq=b0.cseq + 1, expires_at=time.time() + 3600, core=worker)
        return [b0] + list(current[1:]), b0.cseq
    return change


def encode_bindings(bindings) -> bytes:
    import orjson
    return orjson.dumps([b.to_dict() for b in bindings])


def decode_bindings(raw):
    import orjson
    from host.sip.registrar import Binding
    return [Binding.from_dict(d) for d in orjson.loads(raw)] if raw else []


# ---------------------------------------------------------------- backends (worker side)

class SqliteBackend:
    def __init__(self, path: str, threaded: bool):
        self.path, self.threaded = path, threaded

    async def open(self):
        self.con = sqlite3.connect(self.path, isolation_level=None, timeout=10,
                                   check_same_thread=False)
        self.con.execute("PRAGMA synchronous=NORMAL")

    async def _call(self, fn, *args):
        if self.threaded:
            import trio
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    def _kv(self, key, value):
        import orjson
        c = self.con
        row = c.execute("SELECT value FROM kv WHERE key=? AND expires>?", (key, time.time())).fetchone()
        old = orjson.loads(row[0]) if row else None
        c.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?)", (key, orjson.dumps(value), time.time() + 60))
        return old

    def _bindings(self, aor, change):
        c = self.con
        c.execute("BEGIN IMMEDIATE")
        try:
            row = c.execute("SELECT value FROM aor WHERE aor=?", (aor,)).fetchone()
            new, result = change(decode_bindings(row[0] if row else None))
            if new:
                c.execute("INSERT OR REPLACE INTO aor VALUES (?,?,?)",
                          (aor, encode_bindings(new), max(b.expires_at for b in new)))
            else:
                c.execute("DELETE FROM aor WHERE aor=?", (aor,))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return result

    def _advance(self, key, value, ttl):
        now = time.time()
        cur = self.con.execute(
            "INSERT INTO nc VALUES (?,?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value,"
            " expires=excluded.expires WHERE excluded.value>nc.value OR nc.expires<=?",
            (key, value, now + ttl, now))
        return cur.rowcount == 1

    def _read_aor(self, aor):
        row = self.con.execute("SELECT value FROM aor WHERE aor=?", (aor,)).fetchone()
        return decode_bindings(row[0] if row else None)

    async def kv(self, key, value):
        return await self._call(self._kv, key, value)

    async def bindings(self, aor, change):
        return await self._call(self._bindings, aor, change)

    async def advance(self, key, value, ttl):
        return await self._call(self._advance, key, value, ttl)

    async def read_aor(self, aor):
        return self._read_aor(aor)

    async def close(self):
        self.con.close()


def sqlite_schema(path: str) -> None:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)")
    con.execute("CREATE TABLE aor (aor TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL)")
    con.execute("CREATE TABLE nc (key TEXT PRIMARY KEY, value INTEGER NOT NULL, expires REAL NOT NULL)")
    con.close()


class LmdbBackend:
    def __init__(self, path: str):
        self.path = path

    async def open(self):
        import lmdb
        self.env = lmdb.open(self.path, map_size=1 << 30, max_dbs=4, sync=False, metasync=False)
        self.kvdb = self.env.open_db(b"kv")
        self.aordb = self.env.open_db(b"aor")
        self.ncdb = self.env.open_db(b"nc")

    async def kv(self, key, value):
        import orjson
        k = key.encode()
        with self.env.begin(db=self.kvdb) as txn:
            raw = txn.get(k)
        old = None
        if raw is not None:
            exp, old = orjson.loads(raw)
            if exp <= time.time():
                old = None
        with self.env.begin(write=True, db=self.kvdb) as txn:
            txn.put(k, orjson.dumps([time.time() + 60, value]))
        return old

    async def bindings(self, aor, change):
        k = aor.encode()
        with self.env.begin(write=True, db=self.aordb) as txn:
            new, result = change(decode_bindings(txn.get(k)))   # raises: txn aborted
            if new:
                txn.put(k, encode_bindings(new))
            else:
                txn.delete(k)
        return result

    async def advance(self, key, value, ttl):
        import struct
        k = key.encode()
        now = time.time()
        with self.env.begin(write=True, db=self.ncdb) as txn:
            raw = txn.get(k)
            if raw is not None:
                cur, exp = struct.unpack("<qd", raw)
                if exp > now and value <= cur:
                    return False
            txn.put(k, struct.pack("<qd", value, now + ttl))
        return True

    async def read_aor(self, aor):
        with self.env.begin(db=self.aordb) as txn:
            return decode_bindings(txn.get(aor.encode()))

    async def close(self):
        self.env.close()


def lmdb_create(path: str) -> None:
    import lmdb
    env = lmdb.open(path, map_size=1 << 30, max_dbs=4, sync=False, metasync=False)
    for name in (b"kv", b"aor", b"nc"):
        env.open_db(name)
    env.close()


class ParentClient:
    """A trio client of the parent's store: one unix connection, requests
    [id, op, *args] as orjson lines, answers [id, result] matched by id."""

    def __init__(self, path: str, apply: bool = False):
        self.path, self.apply = path, apply
        self.waiting = {}
        self.next_id = 0

    async def open(self, nursery):
        import trio
        self.stream = await trio.open_unix_socket(self.path)
        self.send_lock = trio.Lock()
        nursery.start_soon(self._reader)

    async def _reader(self):
        import orjson
        buf = b""
        import trio
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                rid, result = orjson.loads(line)
                slot = self.waiting.pop(rid)
                slot[1] = result
                slot[0].set()

    async def call(self, op, *args):
        import orjson
        import trio
        self.next_id += 1
        rid = self.next_id
        slot = [trio.Event(), None]
        self.waiting[rid] = slot
        async with self.send_lock:
            await self.stream.send_all(orjson.dumps([rid, op, *args]) + b"\n")
        await slot[0].wait()
        result = slot[1]
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(result["error"])
        return result

    async def kv(self, key, value):
        old = await self.call("get", key)
        await self.call("set", key, value, 60)
        return old

    async def bindings(self, aor, change):
        from host.sip.registrar import Binding
        if self.apply:
            return await self.call("bapply", aor, "touch", [_worker_name])
        for _ in range(64):
            version, dicts = await self.call("bget", aor)
            new, result = change([Binding.from_dict(d) for d in dicts])
            if await self.call("bput", aor, version, [b.to_dict() for b in new]):
                return result
        raise RuntimeError(f"bindings of {aor}: too many conflicts")

    async def advance(self, key, value, ttl):
        return await self.call("advance", key, value, ttl)

    async def read_aor(self, aor):
        from host.sip.registrar import Binding
        version, dicts = await self.call("bget", aor)
        return [Binding.from_dict(d) for d in dicts]

    async def close(self):
        await self.stream.aclose()


class RedisBackend:
    def __init__(self, url: str, prefix: str):
        from host.storage.redis import RedisStore
        self.store = RedisStore(url, prefix=prefix)

    async def open(self, nursery):
        await nursery.start(self.store.run)

    async def kv(self, key, value):
        old = await self.store.get(key)
        await self.store.set(key, value, 60)
        return old

    async def bindings(self, aor, change):
        return await self.store.update_bindings(aor, change)

    async def advance(self, key, value, ttl):
        return await self.store.advance(key, value, ttl)

    async def read_aor(self, aor):
        return await self.store.bindings(aor)

    async def close(self):
        pass


# ---------------------------------------------------------------- the parent's store server

def serve_parent(path: str) -> None:
    import orjson
    import trio
    from host.sip.registrar import Binding
    from host.storage.memory import MemoryStore

    store = MemoryStore()
    versions: dict[str, int] = {}
    registered = {"touch": lambda aor, worker: change_for(aor, worker)}

    async def handle(op, args):
        if op == "get":
            return await store.get(args[0])
        if op == "set":
            await store.set(args[0], args[1], args[2])
            return None
        if op == "advance":
            return await store.advance(args[0], args[1], args[2])
        if op == "bget":
            return [versions.get(args[0], 0), [b.to_dict() for b in await store.bindings(args[0])]]
        if op == "bput":
            aor, version, dicts = args
            if versions.get(aor, 0) != version:
                return False
            new = [Binding.from_dict(d) for d in dicts]
            await store.update_bindings(aor, lambda current: (new, None))
            versions[aor] = version + 1
            return True
        if op == "bapply":
            aor, name, fargs = args
            result = await store.update_bindings(aor, registered[name](aor, *fargs))
            versions[aor] = versions.get(aor, 0) + 1
            return result
        raise ValueError(f"unknown op {op!r}")

    async def connection(stream):
        buf = b""
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return
                if not data:
                    return
                buf += data
                *lines, buf = buf.split(b"\n")
                out = []
                for line in lines:   # every request of this read, then one send
                    rid, op, *args = orjson.loads(line)
                    try:
                        result = await handle(op, args)
                    except Exception as exc:   # noqa: BLE001 - the client's error
                        result = {"error": repr(exc)}
                    out.append(orjson.dumps([rid, result]))
                if out:
                    try:
                        await stream.send_all(b"\n".join(out) + b"\n")
                    except trio.BrokenResourceError:
                        return

    async def main():
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(path)
        sock.listen(128)
        print("ready", flush=True)
        await trio.serve_listeners(connection, [trio.SocketListener(sock)])

    trio.run(main)


# ---------------------------------------------------------------- a worker

_worker_name = "w0"


def run_worker(spec: dict) -> None:
    import trio
    global _worker_name
    _worker_name = f"w{spec['index']}"

    async def main():
        cand = spec["candidate"]
        async with trio.open_nursery() as nursery:
            if cand in ("sqlite", "sqlite-thread"):
                backend = SqliteBackend(spec["path"], threaded=cand == "sqlite-thread")
                await backend.open()
            elif cand == "lmdb":
                backend = LmdbBackend(spec["path"])
                await backend.open()
            elif cand.startswith("parent"):
                backend = ParentClient(spec["path"])
                await backend.open(nursery)
            elif cand == "redis":
                backend = RedisBackend(spec["url"], spec["prefix"])
                await backend.open(nursery)
            results = {}
            for i, op in enumerate(spec["ops"]):
                start = spec["t0"] + i * (spec["duration"] + GAP)
                late = time.time() > start
                if isinstance(backend, ParentClient):
                    backend.apply = op == "bindings-apply"
                await trio.sleep(max(0.0, start - time.time()))
                results[op] = await run_op(backend, op, spec, start + spec["duration"])
                results[op]["late"] = late
                if spec["index"] == 0 and op.startswith("bindings"):
                    await trio.sleep(max(0.0, start + spec["duration"] + 0.35 - time.time()))
                    total = 0
                    for a in range(spec["aors"]):
                        current = await backend.read_aor(f"sip:{op}-{a}@example.com")
                        total += current[0].cseq if current else 0
                    results[op]["cseq_sum"] = total
            await backend.close()
            nursery.cancel_scope.cancel()
        print(json.dumps(results), flush=True)

    trio.run(main)


async def run_op(backend, op, spec, end):
    import trio
    rng = random.Random(spec["index"] * 7919 + 1)
    lat: list[int] = []
    accepted: list[int] = []
    counters = [0] * spec["keys"]
    done = 0
    perf = time.perf_counter_ns

    async def one():
        nonlocal done
        while time.time() < end:
            t = perf()
            if op == "kv":
                k = rng.randrange(spec["keys"])
                await backend.kv(f"kv-{k}", {"n": done, "who": _worker_name, "calls": [1, 2, 3]})
            elif op.startswith("bindings"):
                aor = f"sip:{op}-{rng.randrange(spec['aors'])}@example.com"
                await backend.bindings(aor, change_for(aor, _worker_name))
            else:
                k = rng.randrange(spec["keys"])
                counters[k] += 1
                v = counters[k]   # this task's value (others of the worker may bump it meanwhile)
                if await backend.advance(f"nc-{k}", v, 300):
                    accepted.append(k * 10**7 + v)
            lat.append((perf() - t) // 1000)
            done += 1

    c0 = os.times()
    w0 = time.time()
    async with trio.open_nursery() as n:
        for _ in range(spec["inflight"]):
            n.start_soon(one)
    c1 = os.times()
    return {"ops": done, "wall": time.time() - w0,
            "cpu": (c1.user - c0.user) + (c1.system - c0.system),
            "lat": lat, "accepted": accepted}


# ---------------------------------------------------------------- the parent (bench driver)

def proc_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(sorted_values, p):
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


def run_candidate(cand, nproc, args, workdir: Path, redis):
    """One run: the server if any, nproc workers, every op kind. Rows out."""
    rundir = Path(tempfile.mkdtemp(prefix=f"{cand}-{nproc}-", dir=workdir))
    server = None
    spec = {"candidate": cand, "duration": args.duration, "keys": args.keys, "aors": args.aors,
            "inflight": 8 if cand == "parent-x8" else 1,
            "ops": PARENT_OPS if cand.startswith("parent") else OPS}
    server_pid = None
    if cand.startswith("sqlite"):
        spec["path"] = str(rundir / "store.db")
        sqlite_schema(spec["path"])
    elif cand == "lmdb":
        spec["path"] = str(rundir / "lmdb")
        lmdb_create(spec["path"])
    elif cand.startswith("parent"):
        spec["path"] = str(rundir / "store.sock")
        server = subprocess.Popen([sys.executable, __file__, "--serve-parent", spec["path"]],
                                  stdout=subprocess.PIPE, text=True)
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError("the parent store did not start")
        server_pid = server.pid
    elif cand == "redis":
        spec["url"] = redis["url"]
        spec["prefix"] = f"bench{nproc}:"
        server_pid = redis["pid"]
    workers = []
    try:
        spec["t0"] = time.time() + SETUP
        for i in range(nproc):
            workers.append(subprocess.Popen([sys.executable, __file__, "--worker",
                                             json.dumps({**spec, "index": i})],
                                            stdout=subprocess.PIPE, text=True))
        server_cpu = {}
        for i, op in enumerate(spec["ops"]):
            start = spec["t0"] + i * (args.duration + GAP)
            time.sleep(max(0.0, start - time.time()))
            c0 = proc_cpu(server_pid)
            time.sleep(max(0.0, start + args.duration + 0.02 - time.time()))
            server_cpu[op] = proc_cpu(server_pid) - c0
        outs = []
        for w in workers:
            out, _ = w.communicate(timeout=60)
            if w.returncode != 0:
                raise RuntimeError(f"{cand} worker failed ({w.returncode})")
            outs.append(json.loads(out))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        if server is not None:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        shutil.rmtree(rundir, ignore_errors=True)
    rows = []
    for op in spec["ops"]:
        rs = [o[op] for o in outs]
        ops = sum(r["ops"] for r in rs)
        lat = sorted(x for r in rs for x in r["lat"])
        cpu = sum(r["cpu"] for r in rs) + server_cpu[op]
        check = "ok"
        if op.startswith("bindings"):
            cs = rs[0].get("cseq_sum")
            check = "ok" if cs == ops else f"LOST {ops - cs}"
        elif op == "advance":
            acc = [x for r in rs for x in r["accepted"]]
            check = "ok" if len(acc) == len(set(acc)) else f"DUP {len(acc) - len(set(acc))}"
        if any(r["late"] for r in rs):
            check += " (late start)"
        rows.append({"candidate": cand, "op": op, "procs": nproc,
                     "per_proc": [round(r["ops"] / args.duration) for r in rs],
                     "total": round(ops / args.duration), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": lat[-1] if lat else 0,
                     "cpu_us_op": 1e6 * cpu / ops if ops else float("nan"),
                     "server_share": server_cpu[op] / cpu if cpu else 0.0, "check": check})
    return rows


# ---------------------------------------------------------------- crash probe

def crash_child(kind: str, path: str) -> None:
    """Start a write transaction, write, say so, and wait to be killed."""
    if kind == "sqlite":
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT OR REPLACE INTO kv VALUES ('crash', 'uncommitted', 1e12)")
    else:
        import lmdb
        env = lmdb.open(path, map_size=1 << 30, max_dbs=4, sync=False, metasync=False)
        db = env.open_db(b"kv")
        txn = env.begin(write=True, db=db)
        txn.put(b"crash", b"uncommitted")
    print("in-transaction", flush=True)
    time.sleep(30)


def crash_after(kind: str, path: str) -> None:
    t = time.perf_counter()
    if kind == "sqlite":
        con = sqlite3.connect(path, isolation_level=None, timeout=5)
        con.execute("BEGIN IMMEDIATE")
        seen = con.execute("SELECT value FROM kv WHERE key='crash'").fetchone()
        con.execute("INSERT OR REPLACE INTO kv VALUES ('after', 'x', 1e12)")
        con.execute("COMMIT")
    else:
        import lmdb
        env = lmdb.open(path, map_size=1 << 30, max_dbs=4, sync=False, metasync=False)
        db = env.open_db(b"kv")
        with env.begin(write=True, db=db) as txn:
            seen = txn.get(b"crash")
            txn.put(b"after", b"x")
        env.reader_check()
    print(json.dumps({"wait_ms": round(1000 * (time.perf_counter() - t), 2),
                      "uncommitted_visible": seen is not None}), flush=True)


def crash_probe(kind: str, workdir: Path) -> str:
    d = Path(tempfile.mkdtemp(prefix=f"crash-{kind}-", dir=workdir))
    path = str(d / ("store.db" if kind == "sqlite" else "lmdb"))
    (sqlite_schema if kind == "sqlite" else lmdb_create)(path)
    child = subprocess.Popen([sys.executable, __file__, "--crash-child", kind, path],
                             stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "in-transaction":
            return "probe child failed"
        child.send_signal(signal.SIGKILL)
        child.wait()
        try:
            out = subprocess.run([sys.executable, __file__, "--crash-after", kind, path],
                                 capture_output=True, text=True, timeout=8)
        except subprocess.TimeoutExpired:
            return "the next writer HUNG (> 8 s) after a writer was killed in its transaction"
        if out.returncode != 0:
            return f"the next writer failed: {out.stderr.strip().splitlines()[-1:]}"
        r = json.loads(out.stdout)
        return (f"next write transaction after SIGKILL of a writer mid-transaction: "
                f"{r['wait_ms']} ms, uncommitted write visible: {r['uncommitted_visible']}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------- main

def lmdb_available() -> bool:
    try:
        import lmdb  # noqa: F401
        return True
    except ImportError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1.5, help="seconds per op kind (default 1.5)")
    ap.add_argument("--procs", default="1,2", help="worker counts (default 1,2)")
    ap.add_argument("--only", default="", help="comma-separated candidates: " + ",".join(CANDIDATES))
    ap.add_argument("--keys", type=int, default=100, help="shared kv / counter keys (default 100)")
    ap.add_argument("--aors", type=int, default=64, help="shared AoRs (default 64)")
    ap.add_argument("--no-crash", action="store_true", help="skip the crash probe")
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--serve-parent", help=argparse.SUPPRESS)
    ap.add_argument("--crash-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--crash-after", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(json.loads(args.worker))
    if args.serve_parent:
        return serve_parent(args.serve_parent)
    if args.crash_child:
        return crash_child(*args.crash_child)
    if args.crash_after:
        return crash_after(*args.crash_after)

    cands = [c for c in (args.only.split(",") if args.only else CANDIDATES) if c]
    if "lmdb" in cands and not lmdb_available():
        print("lmdb not importable: skipped (pip install lmdb)")
        cands.remove("lmdb")
    if "redis" in cands and not shutil.which("redis-server"):
        print("redis-server not found: skipped")
        cands.remove("redis")
    procs = [int(p) for p in args.procs.split(",")]
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    workdir = Path(tempfile.mkdtemp(prefix="babelsip-shared-store-", dir=base))
    redis = None
    rows = []
    print(f"{os.cpu_count()} CPUs, {args.duration} s per op, files in {workdir}", flush=True)
    try:
        if "redis" in cands:
            port = free_port()
            proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                                    stdout=subprocess.DEVNULL)
            redis = {"proc": proc, "pid": proc.pid, "url": f"redis://127.0.0.1:{port}/0"}
            for _ in range(50):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
        for cand in cands:
            for n in procs:
                got = run_candidate(cand, n, args, workdir, redis)
                rows += got
                for r in got:
                    print_row(r)
        crash = {}
        if not args.no_crash:
            for kind in ("sqlite", "lmdb"):
                if kind == "lmdb" and not lmdb_available():
                    continue
                crash[kind] = crash_probe(kind, workdir)
    finally:
        if redis is not None:
            redis["proc"].terminate()
            redis["proc"].wait(5)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(rows)
    for kind, text in crash.items():
        print(f"crash probe, {kind}: {text}")
    print_recommendation(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "crash": crash}, indent=1))


HEADER = (f"{'candidate':<14}{'op':<15}{'procs':>5}  {'ops/s per proc':<16}{'total':>8}"
          f"{'p50 µs':>9}{'p99 µs':>9}{'max µs':>9}{'cpu µs/op':>11}{'srv%':>6}  check")


def fmt_row(r) -> str:
    per = "/".join(str(x) for x in r["per_proc"])
    return (f"{r['candidate']:<14}{r['op']:<15}{r['procs']:>5}  {per:<16}{r['total']:>8}"
            f"{r['p50']:>9}{r['p99']:>9}{r['max']:>9}{r['cpu_us_op']:>11.1f}{100 * r['server_share']:>5.0f}%  {r['check']}")


def print_row(r) -> None:
    print(fmt_row(r), flush=True)


def print_table(rows) -> None:
    print(HEADER)
    for op in PARENT_OPS:
        for r in rows:
            if r["op"] == op:
                print(fmt_row(r))
        print()


def print_recommendation(rows) -> None:
    def best(op, procs):
        cand = [r for r in rows if r["op"] == op and r["procs"] == procs and r["check"].startswith("ok")
                and not starved(r)]
        return max(cand, key=lambda r: r["total"]) if cand else None
    print("Fastest correct and fair (no process starved), 2 processes:")
    for op in PARENT_OPS:
        b = best(op, 2)
        if b:
            print(f"  {op:<15}{b['candidate']:<14}{b['total']} ops/s, p99 {b['p99']} µs, "
                  f"{b['cpu_us_op']:.1f} CPU µs/op")
    print_warnings(rows)
    print(RECOMMENDATION)


RECOMMENDATION = """
Recommendation for the embedded default of --workers N: LMDB (one file in a
private directory the parent creates fresh at start, each worker opening its
own Environment after the fork), with the parent-owned store as the runner-up.
  * speed: LMDB is the cheapest per op and stays fair between two processes
    (its writer lock is a robust pthread mutex); the parent store costs a unix
    round trip per op, several times LMDB's CPU per op and a share of it in the
    parent, a single-threaded server that all workers wait on; redis more.
  * atomicity of bindings: LMDB and SQLite run the registrar's `change` closure
    as it is inside one cross-process write transaction (Store.update_bindings
    unchanged, no retries); the parent store needs either optimistic versions
    (2 round trips + retries, the slowest bindings rows) or a `bapply` of a
    function registered in the parent by name with JSON arguments (1 round
    trip, but the registrar's rule becomes server code).
  * SQLite is out: its busy handler sleeps and retries, so with two writers one
    process is starved (see its 2-process rows: a few ops, max latency over a
    second, with the event loop blocked all that time); in a thread it is 5-10x
    slower per op.
  * a worker killed mid-operation: LMDB and SQLite roll its transaction back and
    the next writer proceeds at once (crash probe); the parent store applies
    each op whole. The parent (which owns the sockets) dying takes the workers
    with it in every embedded option.
  * persistence: a worker restarting keeps everything in all three; a whole
    server restart keeps LMDB/SQLite data unless the parent starts a fresh file
    (do that: the embedded default promises nothing across restarts today,
    MemoryStore), the parent store loses it like MemoryStore.
  * complexity / cost of LMDB: a C-extension dependency (pip lmdb), a fixed
    map size, expiry kept in the values plus a sweep (the parent can run it),
    dialogs/profiles/aors as key prefixes scanned with a cursor, calls that
    block the loop (microseconds; the writer lock is held only for one change
    function). The parent store reuses MemoryStore unchanged (same expiry and
    profile code) for ~200 lines of protocol, no dependency, loops never
    blocked -- pick it instead if a native dependency is not acceptable.
  * redis stays the --store for several hosts, not for the embedded default.
"""


def starved(r) -> bool:
    return r["procs"] > 1 and (r["max"] > 100_000 or min(r["per_proc"]) * 10 < max(r["per_proc"]))


def print_warnings(rows) -> None:
    for r in rows:
        if starved(r):
            print(f"  note: {r['candidate']} {r['op']} x{r['procs']}: per process {r['per_proc']} ops/s, "
                  f"max latency {r['max'] / 1000:.0f} ms (a process starved / its loop blocked)")


if __name__ == "__main__":
    main()
