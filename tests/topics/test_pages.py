"""Reading one web page safely: extraction, the address guard, and every way a page can fail (topics/pages.py).

Pages come from the loopback server in tests/fakes/web_pages.py. The guard's policy trusts that one server
(127.0.0.1 on its port) and nothing else, so a redirect into any other loopback address is refused as a private
one would be; private ranges themselves are checked through a stub resolver, so no packet ever goes to them.
"""
from __future__ import annotations

import time

import pytest

from bench.demo_pages import render_article
from tests.fakes.web_pages import ARTICLES, WebPages
from topics.pages import AddressPolicy, PageUnreadable, fetch_page

SHORT_DEADLINE = 1.5


@pytest.fixture(scope="module")
def pages():
    with WebPages() as server:
        yield server


@pytest.fixture
def only_the_test_server(pages) -> AddressPolicy:
    return AddressPolicy(trusted=frozenset({("127.0.0.1", pages.port)}))


def read(pages, path: str, policy: AddressPolicy, **options):
    return fetch_page(pages.url(path), policy=policy, **options)


def refusal(pages, path: str, policy: AddressPolicy, **options) -> PageUnreadable:
    with pytest.raises(PageUnreadable) as caught:
        read(pages, path, policy, **options)
    return caught.value


# --- extraction ----------------------------------------------------------------------------------------------------

def test_an_article_keeps_its_body_and_figures_and_drops_the_page_furniture(pages, only_the_test_server):
    page = read(pages, "/news/usps-ground-advantage-2027", only_the_test_server)

    assert page.title == "USPS Ground Advantage rises 7.8% in January"
    assert "A 1 lb Ground Advantage label to zone 8 moves from $11.20 to $12.35" in page.text
    assert "42% of small sellers now use two carriers" in page.text
    for furniture in ("Accept all", "cookies", "Subscribe: 3 months for $1", "Related stories",
                      "Holiday returns could top $890 billion", "48,000 operators", "All rights reserved",
                      "Advertise with us"):
        assert furniture not in page.text


def test_a_plain_text_page_is_read_as_it_is(pages, only_the_test_server):
    page = read(pages, "/plain", only_the_test_server)

    assert page.title == "Warehouse notes, week 47"
    assert "$4.10 per order" in page.text


@pytest.mark.parametrize("path", ["/gzipped", "/deflated"])
def test_a_compressed_page_is_decompressed(pages, only_the_test_server, path):
    assert "$11.20 to $12.35" in read(pages, path, only_the_test_server).text


def test_a_redirect_within_five_hops_is_followed_and_its_destination_kept(pages, only_the_test_server):
    page = read(pages, "/chain/4", only_the_test_server)  # five redirects, then the article

    assert page.final_url == pages.url("/news/usps-ground-advantage-2027")
    assert page.url == pages.url("/chain/4")


def test_every_request_names_the_reader_in_its_user_agent(pages, only_the_test_server):
    import topics.pages

    seen = {}
    article = render_article(**ARTICLES["/news/tariffs-homeware"])
    pages.add("/echo-agent", lambda handler: (seen.setdefault("agent", handler.headers.get("User-Agent")),
                                              handler.send_page(200, article)))
    read(pages, "/echo-agent", only_the_test_server)
    assert seen["agent"] == topics.pages.USER_AGENT and "NewsroomReader" in seen["agent"]


# --- the address guard ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("address, words", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.5", "private"), ("192.168.1.20", "private"), ("fd00::7", "private"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"), ("::ffff:127.0.0.1", "loopback"),
    ("0.0.0.0", "private"), ("100.64.0.1", "not public"), ("224.0.0.1", "not public"),
    # IPv6 that reaches IPv4: NAT64 (RFC 6052, and its local-use prefix), 6to4, Teredo (client 10.0.0.1)
    ("64:ff9b::7f00:1", "loopback address (127.0.0.1 inside"), ("64:ff9b::a00:1", "private address (10.0.0.1 inside"),
    ("64:ff9b::a9fe:a9fe", "link-local address (169.254.169.254 inside"), ("64:ff9b:1::5db8:d822", "local-use NAT64"),
    ("2002:7f00:1::1", "loopback address (127.0.0.1 inside"),
    ("2002:a9fe:a9fe::1", "link-local address (169.254.169.254 inside"),
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private address (10.0.0.1 inside"),
])
def test_the_policy_refuses_every_address_that_is_not_public(address, words):
    assert words in AddressPolicy().refusal(address, 80)


def test_the_policy_allows_public_addresses_and_private_ones_only_when_told():
    assert AddressPolicy().refusal("93.184.216.34", 443) is None
    assert AddressPolicy().refusal("2606:2800:220:1:248:1893:25c8:1946", 443) is None
    assert AddressPolicy().refusal("64:ff9b::5db8:d822", 443) is None  # NAT64 of 93.184.216.34
    assert AddressPolicy().refusal("2002:5db8:d822::1", 443) is None  # 6to4 of 93.184.216.34
    assert AddressPolicy(allow_private=True).refusal("10.1.2.3", 80) is None


def test_a_page_on_loopback_is_refused_by_default(pages):
    error = refusal(pages, "/news/usps-ground-advantage-2027", AddressPolicy())

    assert "refused to fetch 127.0.0.1" in error.reason and "loopback" in error.reason
    assert error.transient is False


def test_a_host_name_that_resolves_to_a_private_address_is_refused_before_any_connection():
    asked = []

    def resolver(host: str, port: int, timeout: float) -> list[str]:
        asked.append((host, port))
        return ["10.20.30.40"]  # never connected to: the guard refuses first

    with pytest.raises(PageUnreadable, match="refused to fetch intranet.example: it points to a private address"):
        fetch_page("http://intranet.example/admin", policy=AddressPolicy(), resolver=resolver)
    assert asked == [("intranet.example", 80)]


def test_a_host_name_that_resolves_to_nat64_loopback_is_refused_before_any_connection():
    with pytest.raises(PageUnreadable, match=r"refused to fetch internal.example: .*loopback address \(127.0.0.1"):
        fetch_page("http://internal.example/", policy=AddressPolicy(), deadline_seconds=2,
                   resolver=lambda host, port, timeout: ["64:ff9b::7f00:1"])


def test_a_name_resolving_to_a_public_and_a_private_address_is_refused():
    with pytest.raises(PageUnreadable, match="link-local"):
        fetch_page("https://shop.example/", policy=AddressPolicy(),
                   resolver=lambda host, port, timeout: ["93.184.216.34", "169.254.169.254"])


def test_a_redirect_into_a_loopback_address_is_refused(pages, only_the_test_server):
    error = refusal(pages, f"/redirect?to=http://127.0.0.2:{pages.port}/news/tariffs-homeware", only_the_test_server)

    assert "refused to fetch 127.0.0.2" in error.reason and "loopback" in error.reason
    assert pages.requests_for("/news/tariffs-homeware") == 0


def test_a_redirect_to_a_name_that_resolves_to_a_private_address_is_refused(pages):
    trusted = AddressPolicy(trusted=frozenset({("127.0.0.1", pages.port)}))
    names = {"127.0.0.1": ["127.0.0.1"], "metadata.internal": ["169.254.169.254"]}

    with pytest.raises(PageUnreadable, match="refused to fetch metadata.internal: it points to a link-local"):
        fetch_page(pages.url("/redirect?to=http://metadata.internal/latest/"), policy=trusted,
                   resolver=lambda host, port, timeout: names[host])


def test_a_redirect_to_another_scheme_is_refused(pages, only_the_test_server):
    error = refusal(pages, "/redirect?to=file:///etc/passwd", only_the_test_server)

    assert error.reason == "only http and https pages are fetched, not file addresses"


@pytest.mark.parametrize("url", ["ftp://example.com/a", "javascript:alert(1)", "file:///etc/passwd"])
def test_an_address_that_is_not_http_is_refused_without_a_request(url):
    with pytest.raises(PageUnreadable, match="only http and https"):
        fetch_page(url, policy=AddressPolicy(allow_private=True))


# --- every failure, with its reason ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path, reason, transient", [
    ("/status/403", "the site refused access (HTTP 403)", False),
    ("/status/404", "the page does not exist (HTTP 404)", False),
    ("/status/500", "the site did not serve the page (HTTP 500)", True),
    ("/not-html", "not a web page or plain text (application/pdf)", False),
    ("/too-large", "the page is larger than 2 MB", False),
    ("/too-large-chunked", "the page is larger than 2 MB", False),
    ("/bomb", "the page is larger than 2 MB", False),
    ("/loop/a", "a redirect loop: the page redirects back to an address it already went through", False),
    ("/chain/5", "more than 5 redirects", False),
])
def test_a_page_that_cannot_be_read_fails_with_its_reason(pages, only_the_test_server, path, reason, transient):
    error = refusal(pages, path, only_the_test_server)

    assert (error.reason, error.transient) == (reason, transient)


def test_a_page_with_too_little_text_counts_as_unreadable(pages, only_the_test_server):
    error = refusal(pages, "/thin", only_the_test_server)

    assert error.reason.startswith("too little readable text (")


def test_a_decompression_bomb_is_stopped_at_the_cap_on_its_decoded_size(pages, only_the_test_server):
    import tracemalloc

    tracemalloc.start()
    try:
        refusal(pages, "/bomb", only_the_test_server)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, f"reading the bomb took {peak:,} bytes at its peak"


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_a_page_that_trickles_for_ever_is_given_up_at_the_deadline(pages, only_the_test_server, path):
    started = time.monotonic()
    error = refusal(pages, path, only_the_test_server, deadline_seconds=SHORT_DEADLINE)

    assert error.reason == f"the page did not arrive within {SHORT_DEADLINE:g} s"
    assert error.transient is True
    # Not a timing target: a trickle that were not cut off would run for a minute.
    assert time.monotonic() - started < 30


def test_a_host_that_does_not_resolve_fails_as_a_passing_problem():
    def resolver(host: str, port: int, timeout: float) -> list[str]:
        raise PageUnreadable(f"the host name {host} could not be resolved (gaierror)", transient=True)

    with pytest.raises(PageUnreadable, match="could not be resolved") as caught:
        fetch_page("https://no-such-host.example/", policy=AddressPolicy(), resolver=resolver)
    assert caught.value.transient is True
