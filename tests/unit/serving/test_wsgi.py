"""gunicorn workers under `carecast.serving.wsgi.serve`: keep-alive connections are shared out between them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from carecast.serving import wsgi
from carecast.serving.wsgi import BalancedThreadWorker

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads connections from /proc (Linux)")

SERVER = """
import sys
from flask import Flask
from carecast.serving.wsgi import BalancedThreadWorker, serve

returned = [0]  # connections this worker's request threads handed back to its main thread
_finish = BalancedThreadWorker.finish_request

def counting(self, conn, fs):
    returned[0] += 1
    return _finish(self, conn, fs)

BalancedThreadWorker.finish_request = counting

def make():
    app = Flask("tiny")
    app.get("/")(lambda: "ok")
    app.add_url_rule("/frozen", "frozen", lambda: str(__import__("gc").get_freeze_count()))
    app.add_url_rule("/returned", "returned", lambda: str(returned[0]))
    return app

serve(port=int(sys.argv[1]), workers=2, app_factory=make)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _connections_per_worker(workers: list[int], port: int) -> list[int]:
    """Established server-side connections on `port` held by each worker (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    counts = []
    for pid in workers:
        n = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                n += 1
        counts.append(n)
    return sorted(counts)


@pytest.fixture
def server() -> Iterator[tuple[int, list[int]]]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            workers = _children(proc.pid)
            if len(workers) == 2 and all(_answers(port) for _ in range(4)):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # both workers past their start-up
        yield port, workers
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


ROUNDS = 10


def test_keep_alive_connections_opened_together_are_shared_between_workers(server: tuple[int, list[int]]) -> None:
    port, workers = server
    splits = []
    for _ in range(ROUNDS):
        clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(8)]
        try:
            for c in clients:
                c.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            for c in clients:
                assert c.recv(256).startswith(b"HTTP/1.1 200")
            splits.append(_connections_per_worker(workers, port))
        finally:
            for c in clients:
                c.close()
        time.sleep(0.5)  # the workers see the closes
    # 8 connections on 2 workers: never 1/7 or 8/0 and nearly always 4/4 or 3/5 (a worker busy past the 5 ms
    # deferral can leave 2/6). gunicorn's own worker gave, in two runs of 10 rounds, 1/7 or 0/8 seven times
    # and 4/4 or 3/5 seven times; this one 4/4 twenty times.
    assert all(sum(s) == 8 and s[1] - s[0] <= 4 for s in splits), splits
    assert sum(s[1] - s[0] <= 2 for s in splits) >= ROUNDS - 2, splits


def test_workers_freeze_what_they_loaded_out_of_the_collectors_way(server: tuple[int, list[int]]) -> None:
    port, _ = server
    for _ in range(4):  # either worker
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET /frozen HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
        assert int(answer.rsplit(b"\r\n\r\n", 1)[1]) > 10_000  # flask, gunicorn and carecast's modules


def _ask(s: socket.socket, path: str) -> bytes:
    """One keep-alive request on `s`; the body of its answer."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _length(answer):
        chunk = s.recv(4096)
        assert chunk, "the server closed the connection"
        answer += chunk
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise AssertionError("no Content-Length")


def test_a_request_thread_serves_its_connection_while_the_client_keeps_sending(
        server: tuple[int, list[int]]) -> None:
    port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        before = int(_ask(s, "/returned"))
        for _ in range(20):
            assert _ask(s, "/") == b"ok"
        # gunicorn's own worker hands the connection back to its main thread after every answer (21 here)
        assert int(_ask(s, "/returned")) == before
        for _ in range(2):  # a pause longer than the thread waits: back to the poller, still served
            time.sleep(wsgi.LINGER_S * 3)
            assert _ask(s, "/") == b"ok"
        assert int(_ask(s, "/returned")) == before + 2


class _Conn:
    is_http2 = False


class _Cfg:
    threads = 16


def test_a_thread_waits_on_its_connection_only_while_others_stay_free() -> None:
    worker = _Worker(os.getpid())
    worker.cfg = _Cfg()
    worker._occupied = _Cfg.threads - wsgi.LINGER_RESERVE_THREADS
    assert worker.may_linger(_Conn())
    worker._occupied += 1
    assert not worker.may_linger(_Conn())  # the reserve is kept for new connections and streams
    worker._occupied = 1
    h2 = _Conn()
    h2.is_http2 = True
    assert not worker.may_linger(h2)  # HTTP/2 multiplexes: gunicorn's own loop
    worker.alive = False
    assert not worker.may_linger(_Conn())  # stopping: gunicorn's path answers "Connection: close"
    BalancedThreadWorker.release_slot(os.getpid())


class _Worker(BalancedThreadWorker):
    """The balancing decision alone, on the class's shared table, without a process around it."""

    def __init__(self, pid: int) -> None:
        self.alive = True
        self.nr_conns = 0
        self._deferring_since = None
        self._slot = self.claim_slot(pid)


def test_a_busier_worker_leaves_new_connections_to_its_sibling_for_a_moment(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes
    import multiprocessing

    monkeypatch.setattr(BalancedThreadWorker, "_pids", multiprocessing.RawArray(ctypes.c_int, 64))
    monkeypatch.setattr(BalancedThreadWorker, "_conns", multiprocessing.RawArray(ctypes.c_int, 64))
    monkeypatch.setattr(BalancedThreadWorker, "_lock", multiprocessing.Lock())
    alone = _Worker(os.getpid())
    alone.nr_conns = 5
    assert not alone.should_defer(0.0)  # no sibling: as gunicorn's own
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        other = _Worker(sibling.pid)
        assert other._slot != alone._slot
        other.nr_conns = 3
        other._publish()
        assert alone.should_defer(10.0) and alone.should_defer(10.004)  # 5 > 3: the sibling first ...
        assert not alone.should_defer(10.0 + wsgi.DEFER_AT_MOST_S)  # ... but not for longer than this
        alone.nr_conns = 3
        assert not alone.should_defer(11.0)  # level: take it
        alone.nr_conns = 5
        alone.alive = False
        assert not alone.should_defer(12.0)  # stopping: take everything queued
        alone.alive = True
        sibling.kill()
        sibling.wait()
        assert _Worker(4_000_000 + os.getpid() % 1000)._slot == other._slot  # a dead worker's place is reused
        BalancedThreadWorker.release_slot(os.getpid())
        assert os.getpid() not in list(BalancedThreadWorker._pids)
        # a process killed while holding the table's lock: no new place (no balancing), and the master
        # still frees places rather than hang
        monkeypatch.setattr(wsgi, "LOCK_WAIT_S", 0.05)
        BalancedThreadWorker._lock.acquire()
        assert BalancedThreadWorker.claim_slot(os.getpid()) is None
        BalancedThreadWorker.release_slot(other_pid := int(BalancedThreadWorker._pids[other._slot]))
        assert other_pid not in list(BalancedThreadWorker._pids)
    finally:
        sibling.kill()
        sibling.wait()
