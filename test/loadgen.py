"""A bounded HTTP load for release tests and benchmarks: N clients request one URL in a
loop until stopped, and every response that is not 2xx, and every connection error,
counts as a failure.

    with Load("10.213.47.2", 80, "/", host_header="demo.test", clients=24) as load:
        ...  # release
    print(load.result)

With ``tls=True`` the clients speak HTTPS, with the Host header as the TLS server
name and the certificate not verified (test hosts have self-signed ones).

With ``classify`` (a function of a successful response's body returning a label such
as the version the page shows, or None), the load also records when each label was
first and last seen: ``load.labels()`` while it runs, ``result.labels`` after.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_SECONDS = 600
MAX_REQUESTS_PER_CLIENT = 200_000


@dataclass
class LoadResult:
    sent: int
    succeeded: int
    failed: int
    seconds: float
    longest_gap: float
    p50_ms: float
    p99_ms: float
    failures: list[str] = field(default_factory=list)
    # when the longest gap began, in seconds since the start
    longest_gap_at: float = 0.0
    # label -> {"first", "last": seconds since the start, "count"}
    labels: dict[str, dict] = field(default_factory=dict)
    # when each failed request was answered or gave up, in seconds since the start
    failed_at: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "sent": self.sent,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "seconds": round(self.seconds, 2),
            "longest_gap_s": round(self.longest_gap, 3),
            "longest_gap_at_s": round(self.longest_gap_at, 3),
            "p50_ms": round(self.p50_ms, 1),
            "p99_ms": round(self.p99_ms, 1),
            "first_failures": self.failures[:5],
            "labels": self.labels,
        }

    def __str__(self) -> str:
        return (
            f"{self.sent} requests in {self.seconds:.1f} s, {self.failed} failed, "
            f"longest gap {self.longest_gap:.3f} s, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms"
        )


class Load:
    def __init__(
        self,
        address: str,
        port: int,
        path: str,
        host_header: str,
        clients: int = 24,
        timeout: float = 10.0,
        classify: Callable[[bytes], str | None] | None = None,
        tls: bool = False,
        rate: float | None = None,
        planned: tuple[int, ...] = (),
        keep_alive: bool = True,
    ):
        """``rate``: requests per second for all clients together (each client
        waits for its turn); None: every client sends its next request as soon as
        the previous one is answered, which keeps a small host fully busy.
        ``planned``: statuses besides 2xx that count as answered, such as a
        maintenance page's 503 (``classify`` sees their bodies too).
        ``keep_alive`` False: a connection per request (``Connection: close``),
        for load across a reload of Nginx, which closes idle kept-alive
        connections; a client then sends its next request on a closed one,
        which browsers retry (RFC 9112, 9.3.1) and this client would count."""
        self.address, self.port, self.path = address, port, path
        self.tls = tls
        self.host_header = host_header
        self.clients = clients
        self.timeout = timeout
        self.classify = classify
        self.planned = frozenset(planned)
        self.headers = {"Host": host_header}
        if not keep_alive:
            self.headers["Connection"] = "close"
        self.interval = clients / rate if rate else 0.0
        self._labels: dict[str, list[float]] = {}  # label -> [first, last, count]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._successes: list[float] = []
        self._latencies: list[float] = []
        self._failures: list[str] = []
        self._failed_at: list[float] = []
        self._failed = 0
        self._started = 0.0
        self.result: LoadResult | None = None

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)

    @property
    def started(self) -> float:
        """time.monotonic() when the load started."""
        return self._started

    def labels(self) -> dict[str, tuple[float, float, int]]:
        """label -> (first seen, last seen, count), times as time.monotonic()."""
        with self._lock:
            return {
                label: (first, last, int(count))
                for label, (first, last, count) in self._labels.items()
            }

    def stop(self) -> LoadResult:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        seconds = time.monotonic() - self._started
        successes = sorted(self._successes)
        edges = [self._started, *successes, self._started + seconds]
        gaps = [
            later - earlier for earlier, later in zip(edges, edges[1:], strict=False)
        ]
        widest = max(range(len(gaps)), key=gaps.__getitem__)
        latencies = sorted(self._latencies) or [0.0]
        self.result = LoadResult(
            sent=len(successes) + self._failed,
            succeeded=len(successes),
            failed=self._failed,
            seconds=seconds,
            longest_gap=gaps[widest],
            longest_gap_at=edges[widest] - self._started,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            * 1000,
            failures=list(self._failures),
            failed_at=sorted(done - self._started for done in self._failed_at),
            labels={
                label: {
                    "first": round(first - self._started, 3),
                    "last": round(last - self._started, 3),
                    "count": count,
                }
                for label, (first, last, count) in self.labels().items()
            },
        )
        return self.result

    def _connection(self) -> http.client.HTTPConnection:
        if not self.tls:
            return http.client.HTTPConnection(
                self.address, self.port, timeout=self.timeout
            )
        return NamedHTTPSConnection(
            self.address,
            self.port,
            server_name=self.host_header.split(":")[0],
            timeout=self.timeout,
        )

    def _client(self) -> None:
        deadline = self._started + MAX_SECONDS
        connection = None
        turn = time.monotonic()
        for _ in range(MAX_REQUESTS_PER_CLIENT):
            if self.interval:
                turn += self.interval
                self._stop.wait(max(0.0, turn - time.monotonic()))
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            if connection is None:
                connection = self._connection()
            sent = time.monotonic()
            try:
                connection.request("GET", self.path, headers=self.headers)
                response = connection.getresponse()
                body = response.read()
                answered = 200 <= response.status < 300
                outcome = (
                    None
                    if answered or response.status in self.planned
                    else f"HTTP {response.status}"
                )
                label = self.classify(body) if self.classify and not outcome else None
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                outcome = f"{type(error).__name__}: {error}"
                connection.close()
                connection = None
            done = time.monotonic()
            with self._lock:
                if outcome is None:
                    self._successes.append(done)
                    self._latencies.append(done - sent)
                    if label is not None:
                        seen = self._labels.setdefault(label, [done, done, 0])
                        seen[1] = done
                        seen[2] += 1
                else:
                    self._failed += 1
                    self._failed_at.append(done)
                    if len(self._failures) < 20:
                        self._failures.append(outcome)
        if connection is not None:
            connection.close()


class NamedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address with another name as SNI, the certificate unverified."""

    def __init__(self, address: str, port: int, server_name: str, timeout: float):
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(address, port, timeout=timeout, context=context)
        self.server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.server_name)
