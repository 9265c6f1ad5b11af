"""A loopback web server with realistic article pages and every hostile page a source link can lead to.

Articles (`ARTICLES`) sit inside the usual page furniture (navigation, cookie banner, newsletter box, related
links, footer) and quote figures, so extraction and the figure checks meet what real pages look like. The
hostile pages: 403, 404, 500, too large (declared and chunked), not HTML, a redirect loop, a redirect chain
longer than five, a redirect to any address (`/redirect?to=...`, e.g. into a loopback address), a body that
trickles and never ends, headers that trickle, a gzip bomb, and a page with too little text.

    with WebPages() as pages:
        pages.url("/news/usps-ground-advantage-2027")
"""
from __future__ import annotations

import gzip
import io
import zlib
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

from bench.demo_pages import PageHandler, PageServer, render_article

ARTICLES: dict[str, dict] = {
    "/news/usps-ground-advantage-2027": {
        "site": "ParcelWire",
        "title": "USPS Ground Advantage rises 7.8% in January",
        "paragraphs": [
            "The US Postal Service filed new rates with its regulator on Monday. Ground Advantage prices rise an "
            "average of 7.8% on January 19, 2027, with the steepest increases on zones 5 to 8 and on packages "
            "over 5 lb.",
            "Priority Mail goes up 5.9%. A 1 lb Ground Advantage label to zone 8 moves from $11.20 to $12.35, "
            "and a seller shipping 1,200 parcels a month would pay about $1.4k more each month.",
            "Analysts at ShipMetrics expect regional carriers to keep winning share: they count 3x more regional "
            "parcel volume than in 2023 and say 42% of small sellers now use two carriers or more.",
        ],
    },
    "/news/tariffs-homeware": {
        "site": "TradeLane Daily",
        "title": "New tariffs add 35% to imported homeware",
        "paragraphs": [
            "A 35% tariff on consumer goods from China takes effect on December 1, covering kitchenware, "
            "textiles and small furniture that many online shops import.",
            "Importers surveyed by the trade group said landed costs would rise by $2.40 per unit on a typical "
            "$9 product, and 61% plan to raise retail prices before the spring.",
            "Customs brokers expect a rush of shipments in the last two weeks of November and warn that "
            "warehouse space near the ports is already 94% full.",
        ],
    },
}
THIN_PAGE = (
    "<html><head><title>Subscribe to keep reading</title></head><body>"
    "<nav><a href='/'>Home</a> <a href='/news'>News</a></nav>"
    "<article><h1>Sellers brace for fees</h1><p>Subscribe to read this story.</p></article>"
    "<footer>© 2026 Paywall Times</footer></body></html>"
)
PLAIN_TEXT = (
    "Warehouse notes, week 47\n\n"
    "Our 3PL quoted $4.10 per order for pick and pack, up from $3.65 last year, and storage now costs $28 per "
    "pallet a month. We moved 2,400 orders in October and expect 3,100 in December. Returns processing is a "
    "flat $2.25 per parcel. Anyone else seeing the same jump this quarter?\n"
)
TOO_LARGE_BYTES = 3 * 1024 * 1024
BOMB_DECODED_BYTES = 200 * 1024 * 1024
TRICKLE_INTERVAL = 0.2
TRICKLE_MAX_SECONDS = 60  # the server gives up on its own, whoever is (or is not) still reading


@lru_cache(maxsize=1)
def gzip_bomb() -> bytes:
    """A few hundred kilobytes of gzip that decode to 200 MB of spaces (built a megabyte at a time)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as archive:
        block = b" " * (1024 * 1024)
        for _ in range(BOMB_DECODED_BYTES // len(block)):
            archive.write(block)
    return out.getvalue()


class WebPages(PageServer):
    """The article pages and the hostile ones, on 127.0.0.1."""

    def start(self) -> WebPages:
        for path, article in ARTICLES.items():
            self.add_article(path, **article)
        self.add_page("/status/403", "<h1>Forbidden</h1>", status=403)
        self.add_page("/status/404", "<h1>Not found</h1>", status=404)
        self.add_page("/status/500", "<h1>Server error</h1>", status=500)
        self.add_page("/thin", THIN_PAGE)
        self.add_page("/plain", PLAIN_TEXT, content_type="text/plain; charset=utf-8")
        self.add_page("/not-html", b"%PDF-1.7\n" + b"0" * 4000, content_type="application/pdf")
        self.add_page("/too-large", "<html><body><p>" + "x" * TOO_LARGE_BYTES + "</p></body></html>")
        self.add("/too-large-chunked", _endless_chunks)
        self.add("/trickle", _trickle_body)
        self.add("/trickle-headers", _trickle_headers)
        self.add("/bomb", _bomb)
        usps = render_article(**ARTICLES["/news/usps-ground-advantage-2027"]).encode()
        self.add_page("/gzipped", gzip.compress(usps), headers={"Content-Encoding": "gzip"})
        self.add_page("/deflated", zlib.compress(usps), headers={"Content-Encoding": "deflate"})
        self.add("/redirect", _redirect_to)
        self.add("/moved", lambda h: _redirect(h, "/news/usps-ground-advantage-2027"))
        self.add("/loop/a", lambda h: _redirect(h, "/loop/b"))
        self.add("/loop/b", lambda h: _redirect(h, "/loop/a"))
        self.prefix_routes["/chain/"] = _chain
        super().start()
        return self


def _redirect(handler: PageHandler, location: str, status: int = 302) -> None:
    handler.send_page(status, "", headers={"Location": location})


def _redirect_to(handler: PageHandler) -> None:
    """`/redirect?to=URL`: a redirect to anywhere, such as a loopback or private address."""
    target = parse_qs(urlsplit(handler.path).query).get("to", ["/"])[0]
    _redirect(handler, target, status=301)


def _chain(handler: PageHandler) -> None:
    """`/chain/N` redirects to `/chain/N-1`; `/chain/0` is an article: N + 1 hops in all."""
    hops = int(urlsplit(handler.path).path.rsplit("/", 1)[-1] or 0)
    _redirect(handler, f"/chain/{hops - 1}" if hops > 0 else "/news/usps-ground-advantage-2027")


def _bomb(handler: PageHandler) -> None:
    handler.send_page(200, gzip_bomb(), headers={"Content-Encoding": "gzip"})


def _endless_chunks(handler: PageHandler) -> None:
    """A chunked body with no length that goes on past any cap (it stops on its own after 8 MB)."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    chunk = b"<p>" + b"y" * 65536 + b"</p>"
    for _ in range(8 * 1024 * 1024 // len(chunk)):
        handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    handler.wfile.write(b"0\r\n\r\n")


def _trickle_body(handler: PageHandler) -> None:
    """Headers at once, then one byte of body every 0.2 s, never reaching its declared length."""
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(1024 * 1024))
    handler.end_headers()
    _drip(handler, b"<html><body><p>" + b"slow " * 100000)
    handler.close_connection = True


def _trickle_headers(handler: PageHandler) -> None:
    """The status line and headers themselves, one byte every 0.2 s: no response ever completes."""
    _drip(handler, b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Padding: " + b"a" * 100000)
    handler.close_connection = True


def _drip(handler: PageHandler, data: bytes) -> None:
    stopping = handler.server.pages.stopping
    for index in range(min(len(data), int(TRICKLE_MAX_SECONDS / TRICKLE_INTERVAL))):
        handler.wfile.write(data[index:index + 1])
        handler.wfile.flush()
        if stopping.wait(TRICKLE_INTERVAL):
            return
