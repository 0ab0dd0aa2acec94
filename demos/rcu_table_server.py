"""An RCU-protected routing table served over TCP, swapped while clients hammer it, against
the same server with a lock-protected table, on asyncio or Trio.

A server on 127.0.0.1 answers ``GET <key>`` lines from a routing table (a dict of 1024
routes). Two ways to protect the table from the writer that reloads it every few milliseconds
(each reload fetches its routes 64 at a time, waiting 0.2 ms per fetch as a reload from a
file or a peer waits for I/O):

* **rcu**: readers never lock. Each request looks the key up inside ``with rcu.read_lock():``
  and stays inside while it writes the answer (it awaits inside the section). The writer
  builds the new version aside, publishes it with :meth:`rcukit.RcuPointer.assign` and retires
  the old one with ``rcu.kvfree_rcu(old, release=Table.teardown)``: torn down (cleared and
  marked dead) only after a grace period, in bulk. A reader that saw a torn-down table would
  answer ``ERR dead``; it never happens.
* **lock**: one ``anyio.Lock`` around the table; readers take it per request (and answer
  while holding it, like the RCU reader), the writer takes it to reload the table in place,
  so readers queue behind every reload.

A bounded load generator (``--clients`` connections, ``--requests`` each, one request in flight
per connection) measures every request's latency and prints p50, p99, requests/s and the
released tables readers saw (must be 0) for each table, then the p99 ratio.

Run: ``python demos/rcu_table_server.py [--loop asyncio|trio] [--table rcu|lock|both]
[--clients N] [--requests N] [--port P]`` (port 0 picks a free one).
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from rcukit.app import RcuDomain, RcuPointer, open_domain

N_ROUTES = 1024
#: A reload fetches this many routes at a time, each fetch a round trip of FETCH_DELAY seconds
#: (a reload reads a file or asks a peer: it waits for I/O while it builds the table).
FETCH_BATCH = 64
FETCH_DELAY = 0.0002
KEYS = [f"route{i}" for i in range(N_ROUTES)]


class Table(dict[str, str]):
    """A routing table version; ``dead`` is set when it is torn down."""

    def __init__(self, version: int) -> None:
        super().__init__()
        self.version = version
        self.dead = False

    def teardown(self) -> None:
        self.dead = True
        self.clear()


async def fetch_routes(table: Table, version: int) -> None:
    """Fill ``table`` with ``version``'s routes, awaiting between batches (the reload's I/O)."""
    for i, k in enumerate(KEYS):
        if i % FETCH_BATCH == 0:
            await anyio.sleep(FETCH_DELAY)
        table[k] = f"{k}->nexthop{(i + version) % 7}"


def answer(table: Table, key: str, stats: dict[str, int]) -> str:
    if table.dead:
        stats["dead"] += 1
        return "ERR dead"
    return table.get(key, "ERR unknown key")


class RcuTable:
    """The RCU-protected table: lock-free readers, a writer that publishes new versions."""

    name = "rcu"

    def __init__(self, rcu: RcuDomain, first: Table) -> None:
        self.rcu = rcu
        self.ptr: RcuPointer[Table] = RcuPointer(rcu, first)

    async def serve(self, stream: anyio.abc.ByteStream, key: str, stats: dict[str, int]) -> None:
        with self.rcu.read_lock():
            table = self.ptr.dereference()
            text = answer(table, key, stats)
            # still inside the read section: the table cannot be torn down under us
            await stream.send(f"{text} v{table.version}\n".encode())

    async def reload(self, version: int) -> None:
        new = Table(version)
        await fetch_routes(new, version)
        old = self.ptr.assign(new)
        self.rcu.kvfree_rcu(old, release=Table.teardown)


class LockTable:
    """The lock-protected table: readers and the reloading writer exclude each other."""

    name = "lock"

    def __init__(self, first: Table) -> None:
        self.lock = anyio.Lock()
        self.table = first

    async def serve(self, stream: anyio.abc.ByteStream, key: str, stats: dict[str, int]) -> None:
        async with self.lock:
            table = self.table
            text = answer(table, key, stats)
            await stream.send(f"{text} v{table.version}\n".encode())

    async def reload(self, version: int) -> None:
        async with self.lock:
            self.table.version = version
            await fetch_routes(self.table, version)


async def serve_client(stream: anyio.abc.ByteStream, table: Any, stats: dict[str, int]) -> None:
    buf = b""
    async with stream:
        while True:
            try:
                data = await stream.receive(4096)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split()
                if len(parts) != 2 or parts[0] != "GET":
                    await stream.send(b"ERR usage: GET <key>\n")
                    continue
                await table.serve(stream, parts[1], stats)
                stats["served"] += 1


async def writer(table: Any, stop: anyio.Event, stats: dict[str, int], interval: float) -> None:
    version = 0
    while not stop.is_set():
        await anyio.sleep(interval)
        version += 1
        await table.reload(version)
        stats["swaps"] += 1


async def client(port: int, n: int, results: dict[str, int], latencies: list[float]) -> None:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        for i in range(n):
            key = KEYS[(i * 37) % len(KEYS)]
            t0 = time.perf_counter()
            await stream.send(f"GET {key}\n".encode())
            reply = b""
            while not reply.endswith(b"\n"):
                reply += await stream.receive(4096)
            latencies.append(time.perf_counter() - t0)
            text = reply.decode()
            if text.startswith("ERR"):
                results["errors"] += 1
            elif not text.startswith(f"{key}->"):
                results["wrong"] += 1
            else:
                results["ok"] += 1


def percentile(sorted_xs: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0..100) of an ascending list."""
    if not sorted_xs:
        return 0.0
    rank = max(1, -(-len(sorted_xs) * q // 100))
    return sorted_xs[int(rank) - 1]


async def run(
    clients: int = 8,
    requests: int = 200,
    port: int = 0,
    swap_interval: float = 0.002,
    table: str = "rcu",
) -> dict[str, Any]:
    """Serve one table kind on 127.0.0.1 under a bounded load; return what was measured."""
    stats = {"served": 0, "dead": 0, "swaps": 0}
    results = {"ok": 0, "errors": 0, "wrong": 0}
    latencies: list[float] = []
    async with open_domain() as rcu:
        first = Table(0)
        await fetch_routes(first, 0)
        kind: Any = RcuTable(rcu, first) if table == "rcu" else LockTable(first)
        stop = anyio.Event()
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=port)
        bound = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, lambda s: serve_client(s, kind, stats))
            tg.start_soon(writer, kind, stop, stats, swap_interval)
            t0 = time.perf_counter()
            async with anyio.create_task_group() as load:
                for _ in range(clients):
                    load.start_soon(client, bound, requests, results, latencies)
            elapsed = time.perf_counter() - t0
            stop.set()
            tg.cancel_scope.cancel()
        await listener.aclose()
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
    latencies.sort()
    return {
        **stats,
        **results,
        "table": table,
        "port": bound,
        "requests_per_s": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_us": percentile(latencies, 50) * 1e6,
        "p99_us": percentile(latencies, 99) * 1e6,
        "tables_released": st.kvfree_freed,
        "grace_periods": st.gps_completed,
    }


def run_on(loop: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """``asyncio.run`` or ``trio.run`` (the demo's code is the same on both, through AnyIO)."""
    return anyio.run(fn, backend=loop)


def compare(
    loop: str, clients: int, requests: int, port: int, tables: list[str]
) -> list[dict[str, Any]]:
    """Each table kind under the same load, one after the other, on ``loop``."""
    return [run_on(loop, functools.partial(run, clients, requests, port, table=t)) for t in tables]


def _at_least_one(text: str) -> int:
    """A count of clients or requests: an empty load measures nothing (p99 ratio 0/0)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n}: expected a number >= 1")
    return n


def main(argv: list[str] | None = None) -> int:
    # The docstring's first paragraph (its first line alone stops mid-sentence).
    ap = argparse.ArgumentParser(description=" ".join((__doc__ or "").split("\n\n")[0].split()))
    ap.add_argument("--loop", choices=["asyncio", "trio"], default="trio")
    ap.add_argument("--table", choices=["rcu", "lock", "both"], default="both")
    ap.add_argument("--clients", type=_at_least_one, default=8)
    ap.add_argument("--requests", type=_at_least_one, default=500, help="requests per client")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    tables = ["rcu", "lock"] if args.table == "both" else [args.table]
    rows = compare(args.loop, args.clients, args.requests, args.port, tables)
    print(f"event loop: {args.loop}; {args.clients} clients x {args.requests} requests on "
          f"127.0.0.1, {N_ROUTES} routes reloaded every 2 ms")
    print(f"{'table':<6}{'requests':>10}{'req/s':>10}{'p50 us':>10}{'p99 us':>10}"
          f"{'swaps':>8}{'errors':>8}  released tables seen")
    ok = True
    for r in rows:
        bad = r["errors"] + r["wrong"]
        print(f"{r['table']:<6}{r['served']:>10}{r['requests_per_s']:>10.0f}"
              f"{r['p50_us']:>10.0f}{r['p99_us']:>10.0f}{r['swaps']:>8}{bad:>8}  {r['dead']}")
        ok = ok and r["dead"] == 0 and bad == 0 and r["ok"] == args.clients * args.requests
    for r in rows:
        if r["table"] == "rcu":
            print(f"served {r['served']} requests on 127.0.0.1:{r['port']} while the writer "
                  f"swapped the table {r['swaps']} times")
            print(f"answers ok={r['ok']} errors={r['errors']} wrong={r['wrong']}; readers that "
                  f"saw a released table: {r['dead']}")
            print(f"old tables released after their grace period: {r['tables_released']} "
                  f"({r['grace_periods']} grace periods)")
    if len(rows) == 2:
        print(f"rcu p99 / lock p99: {rows[0]['p99_us'] / max(rows[1]['p99_us'], 1e-9):.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
