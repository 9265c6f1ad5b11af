"""Web pages on 127.0.0.1 for the demo, the benchmarks and the tests' page fake: article pages as sites serve them.

An article page carries the furniture every real one has around its text (navigation, a cookie banner, a
newsletter box, related links, a footer), so extraction is exercised as it is in production. `PageServer` serves
any set of routes; a route is a function that writes the whole answer, so a test can also serve pages that
misbehave (see tests/fakes/web_pages.py).

    with PageServer(latency=1.0) as server:
        server.add_article("/news/usps", site="ParcelWire", title="...", paragraphs=["...", "..."])
        url = server.url("/news/usps")
"""
from __future__ import annotations

import html
import sys
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Route = Callable[["PageHandler"], None]

ARTICLE_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} | {site}</title>
<meta property="og:title" content="{title}">
<meta property="og:site_name" content="{site}">
<meta name="description" content="{description}">
</head>
<body>
<header class="site-header">
  <a class="logo" href="/">{site}</a>
  <nav class="main-nav" aria-label="Sections">
    <ul>
      <li><a href="/news">News</a></li><li><a href="/logistics">Logistics</a></li>
      <li><a href="/marketplaces">Marketplaces</a></li><li><a href="/podcast">Podcast</a></li>
      <li><a href="/subscribe">Subscribe: 3 months for $1</a></li>
    </ul>
  </nav>
</header>
<div id="cookie-banner" class="cookie-consent" role="dialog">
  <p>We and our 214 partners use cookies to personalise content and measure ads. Accept all cookies or manage
  your preferences.</p>
  <button>Accept all</button> <button>Manage preferences</button>
</div>
<main>
  <article class="story">
    <h1>{title}</h1>
    <p class="byline">By {author} · {date} · 4 min read</p>
{paragraphs}
  </article>
  <aside class="newsletter-box">
    <h3>Get the morning briefing</h3>
    <p>Join 48,000 operators who read our daily email. Unsubscribe any time.</p>
  </aside>
  <aside class="related">
    <h3>Related stories</h3>
    <ul>
      <li><a href="/news/warehouse-robots">Warehouse robots cut picking costs by 31% at a mid-size 3PL</a></li>
      <li><a href="/news/holiday-returns">Holiday returns could top $890 billion this year</a></li>
      <li><a href="/news/port-strike">Port strike talks resume with 14 days to the deadline</a></li>
    </ul>
  </aside>
</main>
<footer class="site-footer">
  <p>© 2026 {site} Media LLC. All rights reserved. 1200 Harbor Way, Suite 400.</p>
  <p><a href="/privacy">Privacy</a> · <a href="/terms">Terms</a> · <a href="/advertise">Advertise with us</a></p>
</footer>
</body>
</html>
"""


def render_article(*, site: str, title: str, paragraphs: Sequence[str], author: str = "Dana Reyes",
                   date: str = "November 18, 2026") -> str:
    """An article page: the story's paragraphs inside a site's usual furniture."""
    body = "\n".join(f"    <p>{html.escape(p)}</p>" for p in paragraphs)
    return ARTICLE_TEMPLATE.format(
        site=html.escape(site), title=html.escape(title), author=html.escape(author), date=html.escape(date),
        description=html.escape(paragraphs[0][:150] if paragraphs else title), paragraphs=body,
    )


class PageHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test and demo output quiet
        pass

    def do_GET(self) -> None:
        pages = self.server.pages
        path = urlsplit(self.path).path
        with pages.lock:
            pages.requests.append(path)
        route = pages.routes.get(path) or pages.routes.get(path.rstrip("/"))
        if route is None:
            route = next((r for prefix, r in pages.prefix_routes.items() if path.startswith(prefix)), None)
        if pages.latency:
            pages.stopping.wait(pages.latency)
        try:
            if route is None:
                self.send_page(404, "<html><body><h1>Not found</h1></body></html>")
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def send_page(self, status: int, body: str | bytes, content_type: str = "text/html; charset=utf-8",
                  headers: dict[str, str] | None = None) -> None:
        raw = body.encode("utf-8") if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, pages: PageServer):
        self.pages = pages
        super().__init__((pages.host, pages.port), PageHandler)

    def handle_error(self, request, client_address) -> None:
        # A reader that gives up (a deadline, a size cap) drops the connection: that is the point, not an error.
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class PageServer:
    """Serves routes (path → function writing the answer) on 127.0.0.1 from a daemon thread.

    `latency` delays every answer by that many seconds (the benchmark's slow sites).
    """

    def __init__(self, *, latency: float = 0.0, host: str = "127.0.0.1", port: int = 0):
        self.latency = latency
        self.host = host
        self.port = port
        self.routes: dict[str, Route] = {}
        self.prefix_routes: dict[str, Route] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: _Server | None = None

    def start(self) -> PageServer:
        self.stopping.clear()
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # slow routes watch this and give up
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> PageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, route: Route) -> str:
        self.routes[path] = route
        return self.url(path)

    def add_page(self, path: str, body: str | bytes, *, status: int = 200,
                 content_type: str = "text/html; charset=utf-8", headers: dict[str, str] | None = None) -> str:
        return self.add(path, lambda handler: handler.send_page(status, body, content_type, headers))

    def add_article(self, path: str, *, site: str, title: str, paragraphs: Sequence[str], **extra: str) -> str:
        return self.add_page(path, render_article(site=site, title=title, paragraphs=paragraphs, **extra))

    def requests_for(self, path: str) -> int:
        with self.lock:
            return sum(1 for p in self.requests if p == path)


# --- the demo's pages: a local copy of the page each sample topic links to --------------------------------------

DEMO_PARAGRAPHS = (
    "Sellers in forums and trade groups compared notes this week on what the change means for their stores. "
    "Several said they would review their prices, shipping settings and suppliers before deciding anything.",
    "Most agreed that the details matter more than the headline: which products, which marketplaces and which "
    "customers are affected, and from when. Those who moved early shared what they changed and what it cost them.",
)


def local_path(url: str) -> str:
    """Where the demo serves its copy of `url`: `/host/path`."""
    parts = urlsplit(url)
    return f"/{parts.netloc}{parts.path}".rstrip("/") or "/"


def serve_sample_pages(server: PageServer, topics: Sequence[dict]) -> dict[str, str]:
    """A page for each sample topic with a link, telling its summary inside a site's furniture; the local URL of
    each, by the topic's own URL."""
    local = {}
    for topic in topics:
        url = topic.get("url") or ""
        if not url:
            continue
        host = urlsplit(url).netloc.removeprefix("www.")
        site = host.split(".")[0].replace("-", " ").title()
        paragraphs = [topic.get("summary") or topic["title"], *DEMO_PARAGRAPHS]
        local[url] = server.add_article(local_path(url), site=site, title=topic["title"], paragraphs=paragraphs)
    return local
