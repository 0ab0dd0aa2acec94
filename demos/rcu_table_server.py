"""An RCU-protected routing table served over TCP, swapped while clients hammer it.

A Trio TCP server on 127.0.0.1 answers ``GET <key>`` lines from a table (a dict) published
through an :class:`rcukit.RcuPointer`. Readers never lock: each request looks the key up inside
``with rcu.read_lock():`` and may even await (write the answer) while still inside. A writer
builds a new table every few milliseconds, publishes it with ``assign()``, and retires the old
one with ``rcu.kvfree_rcu(old)``: it is released only after a grace period, in bulk, so no
reader ever sees a table that has been torn down. Every table carries its version and is
"torn down" (cleared and marked dead) by its release function; a reader that observed a dead
table would answer ``ERR dead``, which never happens.

Run: ``python demos/rcu_table_server.py [--clients N] [--requests N] [--port P]``
(port 0 picks a free one). It serves, runs its own clients against itself, and prints a summary.
"""

from __future__ import annotations

import argparse
from typing import Any

import trio

from rcukit.app import RcuDomain, RcuPointer, open_domain

KEYS = [f"route{i}" for i in range(64)]


class Table(dict[str, str]):
    """A routing table version; ``dead`` is set when RCU releases it."""

    def __init__(self, version: int) -> None:
        super().__init__((k, f"{k}->nexthop{(i + version) % 7}@v{version}")
                         for i, k in enumerate(KEYS))
        self.version = version
        self.dead = False

    def teardown(self) -> None:
        self.dead = True
        self.clear()


async def serve_client(stream: trio.SocketStream, rcu: RcuDomain, ptr: RcuPointer[Table],
                       stats: dict[str, int]) -> None:
    buf = b""
    async with stream:
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                parts = line.decode().split()
                if len(parts) != 2 or parts[0] != "GET":
                    await stream.send_all(b"ERR usage: GET <key>\n")
                    continue
                with rcu.read_lock():
                    table = ptr.dereference()
                    if table.dead:
                        stats["dead"] += 1
                        answer = "ERR dead"
                    else:
                        answer = table.get(parts[1], "ERR unknown key")
                    # still inside the read section: the table cannot be released under us
                    await stream.send_all(f"{answer} v{table.version}\n".encode())
                stats["served"] += 1


async def writer(rcu: RcuDomain, ptr: RcuPointer[Table], stop: trio.Event,
                 stats: dict[str, int], interval: float) -> None:
    version = 0
    while not stop.is_set():
        await trio.sleep(interval)
        version += 1
        old = ptr.assign(Table(version))
        rcu.kvfree_rcu(old, release=Table.teardown)
        stats["swaps"] += 1


async def client(port: int, n: int, results: dict[str, int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        for i in range(n):
            key = KEYS[i % len(KEYS)]
            await stream.send_all(f"GET {key}\n".encode())
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = await stream.receive_some(4096)
                if not chunk:
                    raise RuntimeError("server closed the connection")
                reply += chunk
            text = reply.decode()
            if text.startswith("ERR"):
                results["errors"] += 1
            elif not text.startswith(f"{key}->"):
                results["wrong"] += 1
            else:
                results["ok"] += 1


async def run(clients: int = 8, requests: int = 200, port: int = 0,
              swap_interval: float = 0.002) -> dict[str, Any]:
    stats = {"served": 0, "dead": 0, "swaps": 0}
    results = {"ok": 0, "errors": 0, "wrong": 0}
    async with open_domain(drain_delay=0.005) as rcu:
        ptr: RcuPointer[Table] = RcuPointer(rcu, Table(0))
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                trio.serve_tcp,
                lambda s: serve_client(s, rcu, ptr, stats),
                port,
            )
            bound = listeners[0].socket.getsockname()[1]
            nursery.start_soon(writer, rcu, ptr, stop, stats, swap_interval)
            async with trio.open_nursery() as clients_n:
                for _ in range(clients):
                    clients_n.start_soon(client, bound, requests, results)
            stop.set()
            nursery.cancel_scope.cancel()
        await rcu.kvfree_rcu_barrier()
        st = rcu.statistics()
    return {**stats, **results, "port": bound, "tables_released": st.kvfree_freed,
            "grace_periods": st.gps_completed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=500, help="requests per client")
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args(argv)
    r = trio.run(run, args.clients, args.requests, args.port)
    print(f"served {r['served']} requests on 127.0.0.1:{r['port']} while the writer swapped "
          f"the table {r['swaps']} times")
    print(f"answers ok={r['ok']} errors={r['errors']} wrong={r['wrong']}; readers that saw a "
          f"released table: {r['dead']}")
    print(f"old tables released after their grace period: {r['tables_released']} "
          f"({r['grace_periods']} grace periods)")
    return 0 if r["dead"] == 0 and r["errors"] == 0 and r["wrong"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
