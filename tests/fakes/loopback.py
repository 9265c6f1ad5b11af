"""What the loopback API fakes share: a JSON server on 127.0.0.1, request recording and a fault queue.

A fake is a dataclass that mixes in `LoopbackFake`, declares a `requests: list[RecordedRequest]` field and answers
each request in `_answer`; faults queued with `fail_next` are replayed before `_answer` is asked.
"""

from __future__ import annotations

import gzip
from abc import ABC, abstractmethod
import json
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, Any, dict[str, str]]  # status, JSON payload, extra headers


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # credentials masked
    body: str = ""  # secrets masked
    json: Any = None  # the body parsed, or None when it is not JSON


@dataclass
class Fault:
    status: int
    body: bytes
    headers: dict[str, str]
    path: str | None = None  # only requests whose path starts with this; any, if None


class LoopbackFake(ABC):
    """Server lifecycle, `base_url` and fault injection for a dataclass fake (overriding `__post_init__`? call super)."""

    methods: ClassVar[tuple[str, ...]] = ("GET", "POST")  # others get 501, as from a handler without do_<METHOD>
    content_type: ClassVar[str] = "application/json; charset=utf-8"
    url_prefix: ClassVar[str] = ""  # appended to `base_url`
    requests: list[RecordedRequest]

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        fake = self

        class Handler(LoopbackHandler):
            api = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start() the fake first"
        return f"http://127.0.0.1:{self._server.server_address[1]}{self.url_prefix}"

    def fail_next(
        self,
        status: int,
        *,
        json_body: Any = None,
        body: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next request(s) (whose path starts with `path`, if given) with this status and body."""
        if body is None:
            body = json.dumps(json_body if json_body is not None else self._fault_body(status))
        raw = body.encode() if isinstance(body, str) else body
        for _ in range(times):
            self._faults.append(Fault(status, raw, dict(headers or {}), path))

    # --- for the fakes to override ---------------------------------------------------------------------------
    @abstractmethod
    def _fault_body(self, status: int) -> Any:
        """The error payload `fail_next` sends when given no body."""

    def _secrets(self) -> Iterable[str]:
        """Strings to mask wherever they appear in a recorded request (credentials are masked anyway)."""
        return ()

    @abstractmethod
    def _answer(self, handler: LoopbackHandler, request: RecordedRequest) -> Reply:
        """The reply to a request no fault caught; `handler.headers` and `handler.body` are as received."""

    # --- used by the handler ---------------------------------------------------------------------------------
    def _mask(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "***")
        return text

    def _record(self, request: RecordedRequest) -> Fault | None:
        """Keep the request and take the first queued fault meant for its path, as one step."""
        with self._lock:
            self.requests.append(request)
            for fault in list(self._faults):
                if fault.path is None or request.path.startswith(fault.path):
                    self._faults.remove(fault)
                    return fault
        return None


def masked_headers(items: Iterable[tuple[str, str]], mask: Callable[[str], str]) -> dict[str, str]:
    """Request headers with the credential replaced, keeping its scheme ("Bearer ***"), and `mask` on the rest."""
    return {
        name: (value.split(" ", 1)[0] + " ***" if name.lower() == "authorization" else mask(value))
        for name, value in items
    }


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class LoopbackHandler(BaseHTTPRequestHandler):
    """Records each request on `api`, replays a queued fault if one matches, else sends what `api._answer` says."""

    api: LoopbackFake
    body: bytes = b""  # the request body, as read (and un-gzipped)
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # one small answer per request: send it now, not after a delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        api = self.api
        if self.command not in api.methods:
            self.send_error(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({self.command!r})")
            return
        split = urlsplit(self.path)
        self.body = self._read_body()
        request = RecordedRequest(
            self.command,
            split.path,
            parse_qs(split.query),
            masked_headers(self.headers.items(), api._mask),
            api._mask(self.body.decode("utf-8", "replace")),
            _parse_json(self.body),
        )
        fault = api._record(request)
        if fault is not None:
            self.send_body(fault.status, fault.body, fault.headers)
            return
        status, payload, headers = api._answer(self, request)
        self.send_body(status, json.dumps(payload).encode(), headers)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if raw and self.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        return raw

    def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", self.api.content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
