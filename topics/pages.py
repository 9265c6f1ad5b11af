"""Reading one web page for source material, safely: the page is untrusted and so is everything it points to.

- only `http` and `https`, and never an address that is private, loopback, link-local or otherwise not public
  (checked after DNS resolution, on every hop, and the connection goes to the very address that was checked, so
  a name that resolves differently the second time cannot slip through), unless the policy allows private ones;
- at most five redirects, followed by hand so each hop is checked, and a loop is named as such;
- one deadline for the whole fetch (about 15 s): every connect, read and write is held to what is left of it, so
  a server that trickles its headers or its body a byte at a time cannot hold a worker past it;
- at most 2 MB, counted after decompression, and decompressed a bounded piece at a time, so a small gzip bomb
  cannot take more memory than the cap;
- only `text/html` and `text/plain`; the main text is extracted with trafilatura, which drops navigation, cookie
  banners, related links and footers. A page with too little text left counts as unreadable.

Every refusal and failure is a `PageUnreadable` whose reason is written for an editor.
"""
from __future__ import annotations

import ipaddress
import socket
import ssl
import time
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from functools import lru_cache
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import trafilatura

from .dedupe import canonical_url

DEADLINE_SECONDS = 15.0
CONNECT_TIMEOUT_SECONDS = 5.0
MAX_BYTES = 2 * 1024 * 1024
MAX_REDIRECTS = 5
# Less readable text than this, once the page furniture is gone, is not an article (a paywall, a consent wall,
# a page that needs JavaScript).
MIN_TEXT_CHARS = 250
USER_AGENT = "Mozilla/5.0 (compatible; NewsroomReader/1.0; reads the pages an editorial desk's topics link to)"
ACCEPTED_TYPES = ("text/html", "text/plain")
_READ_CHUNK = 64 * 1024
# DNS lookups run on a small pool so that a resolver that hangs cannot hold the fetch past its deadline.
_RESOLVER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="page-dns")
# On an IPv6-only host behind NAT64 (many clouds and clusters), 64:ff9b::a00:1 reaches 10.0.0.1.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_LOCAL_NAT64 = ipaddress.ip_network("64:ff9b:1::/48")  # a network's own translator: it may reach anything inside

Resolver = Callable[[str, int, float], list[str]]


class PageUnreadable(Exception):
    """The page could not be read; `reason` says why in plain words, `transient` whether trying later may help."""

    def __init__(self, reason: str, *, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass(frozen=True)
class Page:
    url: str
    final_url: str
    title: str
    text: str


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses a fetch may connect to: public ones only, unless `allow_private`.

    `trusted` lists exact (ip, port) endpoints allowed whatever their range: a test server on loopback, while
    every other loopback or private address stays refused.
    """

    allow_private: bool = False
    trusted: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def refusal(self, address: str, port: int) -> str | None:
        """Why connecting to `address` is refused, or None when it is allowed."""
        if self.allow_private or (address, port) in self.trusted:
            return None
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address):
            if ip in _LOCAL_NAT64:
                return f"it points to a local-use NAT64 address ({ip})"
            for carried in _carried_ipv4(ip):
                if reason := _range_refusal(carried, f" inside {ip}"):
                    return reason
            if ip.ipv4_mapped is not None or ip in _NAT64:
                return None  # only the IPv4 address it carries is ever reached
        return _range_refusal(ip)


def _carried_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses a connection to `ip` may end up at: IPv4-mapped, NAT64, 6to4, Teredo (server and client)."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip in _NAT64:
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    return list(ip.teredo or ())


def _range_refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, inside: str = "") -> str | None:
    if ip.is_loopback:
        return f"it points to a loopback address ({ip}{inside})"
    if ip.is_link_local:
        return f"it points to a link-local address ({ip}{inside})"
    if ip.is_private:
        return f"it points to a private address ({ip}{inside})"
    if not ip.is_global or ip.is_multicast:
        return f"it points to an address that is not public ({ip}{inside})"
    return None


def resolve(host: str, port: int, timeout: float) -> list[str]:
    """The addresses `host` resolves to, within `timeout` seconds."""
    future = _RESOLVER_POOL.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout=max(timeout, 0.01))
    except FutureTimeout:
        raise PageUnreadable(f"looking up {host} took too long", transient=True) from None
    except (socket.gaierror, UnicodeError) as exc:
        raise PageUnreadable(f"the host name {host} could not be resolved ({exc.__class__.__name__})",
                             transient=True) from None
    return list(dict.fromkeys(info[4][0] for info in infos))


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def bound(self, timeout: float | None, error: type[Exception]) -> float:
        """`timeout` cut to what is left of the deadline; `error` once nothing is left."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise error(f"the deadline of {self.seconds:g} s passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most for what is left of the fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline):
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, timeout=self._deadline.bound(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, timeout=self._deadline.bound(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        stream = self._stream.start_tls(ssl_context, server_hostname=server_hostname,
                                        timeout=self._deadline.bound(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(stream, self._deadline)

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves the host itself, refuses any address the policy refuses, and connects to the address it checked.

    TLS still verifies the certificate against the host name: httpcore passes the name, not the address, to
    start_tls.
    """

    def __init__(self, *, policy: AddressPolicy, deadline: _Deadline, resolver: Resolver):
        self._inner = httpcore.SyncBackend()
        self._policy = policy
        self._deadline = deadline
        self._resolver = resolver

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable | None = None) -> httpcore.NetworkStream:
        addresses = self._resolver(host, port, self._deadline.bound(timeout, httpcore.ConnectTimeout))
        if not addresses:
            raise PageUnreadable(f"the host name {host} has no address", transient=True)
        for address in addresses:
            # Any refused address refuses the host: a name that resolves to both a public and a private
            # address is how a fetch gets pointed at the inside.
            reason = self._policy.refusal(address, port)
            if reason:
                raise PageUnreadable(f"refused to fetch {host}: {reason}")
        error: Exception | None = None
        for address in addresses:
            try:
                stream = self._inner.connect_tcp(
                    address, port, timeout=self._deadline.bound(timeout, httpcore.ConnectTimeout),
                    local_address=local_address, socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self._deadline)
        raise error  # type: ignore[misc]

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise PageUnreadable("refused to fetch through a local socket")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle takes tens of milliseconds of CPU: once per process, not once per page (a context is
    # safe to share between threads).
    return httpx.create_ssl_context(trust_env=False)


class _GuardedTransport(httpx.HTTPTransport):
    def __init__(self, backend: _GuardedBackend):
        super().__init__(verify=_ssl_context(), trust_env=False)
        # httpx offers no way to hand its connection pool a network backend; this is the pool it would build,
        # with ours. No keep-alive: each fetch is a few requests at most, and a pooled connection would skip the
        # address check of the next hop to the same host.
        self._pool = httpcore.ConnectionPool(
            ssl_context=_ssl_context(), max_connections=4, max_keepalive_connections=0,
            http1=True, http2=False, retries=0, network_backend=backend,
        )


def fetch_page(
    url: str,
    *,
    policy: AddressPolicy,
    deadline_seconds: float = DEADLINE_SECONDS,
    max_bytes: int = MAX_BYTES,
    max_redirects: int = MAX_REDIRECTS,
    resolver: Resolver = resolve,
) -> Page:
    """Fetch `url` and extract its main text, or raise PageUnreadable saying why not."""
    deadline = _Deadline(deadline_seconds)
    backend = _GuardedBackend(policy=policy, deadline=deadline, resolver=resolver)
    headers = {"User-Agent": USER_AGENT, "Accept": "text/html,text/plain;q=0.9", "Accept-Language": "en",
               "Accept-Encoding": "gzip, deflate"}
    timeout = httpx.Timeout(deadline_seconds, connect=min(CONNECT_TIMEOUT_SECONDS, deadline_seconds))
    current, seen = url, [canonical_url(url)]
    with httpx.Client(transport=_GuardedTransport(backend), headers=headers, timeout=timeout,
                      follow_redirects=False, trust_env=False) as client:
        for _hop in range(max_redirects + 1):
            _check_scheme(current)
            try:
                with client.stream("GET", current) as response:
                    if response.is_redirect:
                        current = _next_hop(response, current=current, seen=seen)
                        continue
                    _check_status(response)
                    content_type, charset = _check_type(response)
                    body = _read_capped(response, max_bytes=max_bytes, deadline=deadline)
            except httpx.TimeoutException:
                raise PageUnreadable(f"the page did not arrive within {deadline_seconds:g} s", transient=True) from None
            except httpx.TransportError as exc:
                raise PageUnreadable(f"the connection failed ({exc.__class__.__name__})", transient=True) from None
            title, text = extract_text(body, url=current, content_type=content_type, charset=charset)
            if len(text) < MIN_TEXT_CHARS:
                raise PageUnreadable(f"too little readable text ({len(text)} characters once navigation and other "
                                     "page furniture are removed)")
            return Page(url=url, final_url=current, title=title, text=text)
    raise PageUnreadable(f"more than {max_redirects} redirects")


def _check_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise PageUnreadable(f"only http and https pages are fetched, not {parts.scheme or 'this'} addresses")
    if not parts.hostname:
        raise PageUnreadable("the address has no host name")


def _next_hop(response: httpx.Response, *, current: str, seen: list[str]) -> str:
    location = response.headers.get("location", "").strip()
    if not location:
        raise PageUnreadable(f"a redirect (HTTP {response.status_code}) without a destination")
    target = urljoin(current, location)
    if canonical_url(target) in seen:
        raise PageUnreadable("a redirect loop: the page redirects back to an address it already went through")
    seen.append(canonical_url(target))
    return target


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status in (401, 403, 451):
        raise PageUnreadable(f"the site refused access (HTTP {status})")
    if status in (404, 410):
        raise PageUnreadable(f"the page does not exist (HTTP {status})")
    if status == 429 or status >= 500 or status == 408:
        raise PageUnreadable(f"the site did not serve the page (HTTP {status})", transient=True)
    raise PageUnreadable(f"the site answered HTTP {status}")


def _check_type(response: httpx.Response) -> tuple[str, str | None]:
    header = response.headers.get("content-type", "")
    media_type = header.split(";", 1)[0].strip().lower()
    if media_type not in ACCEPTED_TYPES:
        raise PageUnreadable(f"not a web page or plain text ({media_type or 'no content type given'})")
    charset = None
    for parameter in header.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"') or None
    return media_type, charset


def _too_large(max_bytes: int) -> PageUnreadable:
    return PageUnreadable(f"the page is larger than {max_bytes / 1024 / 1024:g} MB")


def _read_capped(response: httpx.Response, *, max_bytes: int, deadline: _Deadline) -> bytes:
    """The body, decompressed a bounded piece at a time, refused once it passes `max_bytes`."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        inflater = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    else:
        raise PageUnreadable(f"the page came compressed as {encoding}, which was not asked for")
    declared = response.headers.get("content-length", "")
    if inflater is None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    for raw in response.iter_raw(_READ_CHUNK):
        deadline.bound(None, httpx.ReadTimeout)
        pending = raw
        while pending:
            if inflater is None:
                piece, pending = pending, b""
            else:
                try:
                    piece = inflater.decompress(pending, max_bytes - size + 1)
                except zlib.error:
                    raise PageUnreadable("the page's compressed body is corrupt") from None
                pending = inflater.unconsumed_tail
            size += len(piece)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(piece)
    if inflater is not None:
        tail = inflater.flush(max_bytes - size + 1)
        if size + len(tail) > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(tail)
    return b"".join(chunks)


def extract_text(body: bytes, *, url: str, content_type: str, charset: str | None = None) -> tuple[str, str]:
    """The title and main text of a page: trafilatura for HTML (page furniture dropped), as it is for plain text."""
    if content_type == "text/plain":
        text = body.decode(charset or "utf-8", errors="replace").strip()
        first = text.splitlines()[0].strip() if text else ""
        return first[:200], text
    html: str | bytes = body
    if charset:
        try:
            html = body.decode(charset, errors="replace")
        except LookupError:
            pass  # a charset Python does not know: trafilatura detects it from the bytes
    options = {"url": url, "with_metadata": True, "include_comments": False, "include_tables": True,
               "favor_precision": True}
    # trafilatura's own extractor first; only a page it gets too little from pays for the fallback extractors.
    document = trafilatura.bare_extraction(html, fast=True, **options)
    if document is None or len((document.text or "").strip()) < MIN_TEXT_CHARS:
        document = trafilatura.bare_extraction(html, **options) or document
    if document is None:
        return "", ""
    return (document.title or "").strip(), (document.text or "").strip()


def warm_up() -> None:
    """Load what the first page would otherwise pay for (the CA bundle, trafilatura's lazily built parts).

    A Celery worker calls it in its parent process, so every pool process inherits them (see topics/tasks.py).
    """
    _ssl_context()
    page = ("<html><head><title>Warm-up</title></head><body><article><p>" + "Sellers compare notes. " * 20
            + "</p></article></body></html>")
    extract_text(page.encode(), url="https://warm-up.invalid/", content_type="text/html")
