"""A loopback fake of Reddit's OAuth API: the app-only token exchange and subreddit listings, on one base URL.

Speaks the real wire format: `POST /api/v1/access_token` (HTTP Basic client credentials, form body) answers with a
bearer token; `GET /r/{name}/hot|top|new` answers with a `Listing` of `t3` children paginated with `after`, with
Reddit's `x-ratelimit-*` headers. Posts are generated in code by `make_post`. `GET /comments/{id}` answers a thread as Reddit does:
`[Listing(t3 post), Listing(t1 comments ... + one "more" stub)]`, the comments made by `make_comment` (shaped on a
recorded thread) and sorted as `sort` asks.

    with FakeRedditAPI() as fake:
        fake.posts["shopify"] = [make_post(title="Shopify raised fees", score=250)]
        fake.fail_next(429, headers={"retry-after": "7"}, path="/r/shopify/hot")
"""

from __future__ import annotations

import base64
import itertools
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from tests.fakes.loopback import LoopbackFake, LoopbackHandler, RecordedRequest, Reply

_ids = itertools.count(1)


def make_post(
    *,
    subreddit: str = "shopify",
    title: str = "Shopify just changed how payouts work for small stores",
    selftext: str = "Anyone else seeing payouts held for 7 days since the update? Our cash flow is a mess.",
    score: int = 120,
    num_comments: int = 45,
    created_utc: float | None = None,
    age_hours: float = 6.0,
    stickied: bool = False,
    removed_by_category: str | None = None,
    author: str | None = "seller_sam",
    id: str | None = None,
    url: str | None = None,
    upvote_ratio: float = 0.94,
    link_flair_text: str | None = None,
) -> dict[str, Any]:
    """One `t3` post's `data`, with Reddit's field names and types (created_utc is a float; ids are base36)."""
    post_id = id or _base36(1_000_000 + next(_ids))
    slug = "_".join(title.lower().split())[:50]
    permalink = f"/r/{subreddit}/comments/{post_id}/{slug}/"
    created = created_utc if created_utc is not None else round(time.time() - age_hours * 3600.0, 1)
    is_self = url is None
    return {
        "approved_at_utc": None,
        "subreddit": subreddit,
        "selftext": selftext if is_self else "",
        "author_fullname": f"t2_{_base36(next(_ids) + 5_000_000)}" if author else None,
        "saved": False,
        "gilded": 0,
        "clicked": False,
        "title": title,
        "link_flair_richtext": [],
        "subreddit_name_prefixed": f"r/{subreddit}",
        "hidden": False,
        "link_flair_css_class": None,
        "downs": 0,
        "hide_score": False,
        "name": f"t3_{post_id}",
        "quarantine": False,
        "link_flair_text_color": "dark",
        "upvote_ratio": upvote_ratio,
        "subreddit_type": "public",
        "ups": score,
        "total_awards_received": 0,
        "media_embed": {},
        "is_original_content": False,
        "user_reports": [],
        "secure_media": None,
        "is_reddit_media_domain": False,
        "is_meta": False,
        "category": None,
        "link_flair_text": link_flair_text,
        "can_mod_post": False,
        "score": score,
        "approved_by": None,
        "thumbnail": "self" if is_self else "default",
        "edited": False,
        "gildings": {},
        "content_categories": None,
        "is_self": is_self,
        "created": created,
        "link_flair_type": "text",
        "removed_by_category": removed_by_category,
        "banned_by": None,
        "domain": f"self.{subreddit}" if is_self else urlsplit(url).netloc,
        "selftext_html": None,
        "likes": None,
        "suggested_sort": None,
        "view_count": None,
        "archived": False,
        "no_follow": False,
        "is_crosspostable": True,
        "pinned": False,
        "over_18": False,
        "all_awardings": [],
        "awarders": [],
        "media_only": False,
        "can_gild": True,
        "spoiler": False,
        "locked": False,
        "author_flair_text": None,
        "treatment_tags": [],
        "visited": False,
        "removed_by": None,
        "num_reports": None,
        "distinguished": "moderator" if stickied else None,
        "subreddit_id": "t5_2tozg",
        "mod_reason_by": None,
        "removal_reason": None,
        "id": post_id,
        "is_robot_indexable": removed_by_category is None,
        "report_reasons": None,
        "author": author if author is not None else "[deleted]",
        "discussion_type": None,
        "num_comments": num_comments,
        "send_replies": True,
        "whitelist_status": "all_ads",
        "contest_mode": False,
        "mod_reports": [],
        "permalink": permalink,
        "parent_whitelist_status": "all_ads",
        "stickied": stickied,
        "url": url or f"https://www.reddit.com{permalink}",
        "subreddit_subscribers": 310_000,
        "created_utc": created,
        "num_crossposts": 0,
        "media": None,
        "is_video": False,
    }


def make_comment(
    *,
    post_id: str,
    body: str = "We switched to a regional carrier for zones 5-8 and saved about 18% on labels.",
    score: int = 40,
    author: str | None = "shipping_nerd",
    stickied: bool = False,
    distinguished: str | None = None,
    id: str | None = None,
    age_hours: float = 3.0,
    replies: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One top-level `t1` comment's `data` on post `post_id`, with Reddit's field names and types."""
    comment_id = id or _base36(2_000_000 + next(_ids))
    created = round(time.time() - age_hours * 3600.0, 1)
    reply_listing: Any = ""
    if replies:
        reply_listing = {"kind": "Listing", "data": {"modhash": None, "dist": None, "after": None, "before": None,
                                                     "children": [{"kind": "t1", "data": r} for r in replies]}}
    return {
        "total_awards_received": 0,
        "approved_at_utc": None,
        "ups": score,
        "awarders": [],
        "mod_reason_by": None,
        "banned_by": None,
        "author_flair_type": "text",
        "removal_reason": None,
        "link_id": f"t3_{post_id}",
        "likes": None,
        "replies": reply_listing,
        "user_reports": [],
        "saved": False,
        "id": comment_id,
        "banned_at_utc": None,
        "gilded": 0,
        "archived": False,
        "no_follow": False,
        "author": author if author is not None else "[deleted]",
        "can_mod_post": False,
        "send_replies": True,
        "parent_id": f"t3_{post_id}",
        "score": score,
        "author_fullname": f"t2_{_base36(next(_ids) + 7_000_000)}" if author else None,
        "report_reasons": None,
        "approved_by": None,
        "all_awardings": [],
        "subreddit_id": "t5_2tozg",
        "collapsed": False,
        "body": body,
        "edited": False,
        "is_submitter": False,
        "downs": 0,
        "author_flair_richtext": [],
        "body_html": "&lt;div class=\"md\"&gt;&lt;p&gt;" + body + "&lt;/p&gt;\n&lt;/div&gt;",
        "gildings": {},
        "collapsed_reason": None,
        "stickied": stickied,
        "subreddit_type": "public",
        "can_gild": True,
        "score_hidden": False,
        "permalink": f"/r/shopify/comments/{post_id}/thread/{comment_id}/",
        "num_reports": None,
        "locked": False,
        "name": f"t1_{comment_id}",
        "created": created,
        "subreddit": "shopify",
        "author_flair_text": None,
        "treatment_tags": [],
        "created_utc": created,
        "subreddit_name_prefixed": "r/shopify",
        "controversiality": 0,
        "depth": 0,
        "mod_reports": [],
        "mod_note": None,
        "distinguished": distinguished,
    }


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while number:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
    return out or "0"


@dataclass
class FakeRedditAPI(LoopbackFake):
    """Reddit's token exchange and listings on 127.0.0.1; `base_url` serves both, as REDDIT_BASE_URL does."""

    client_id: str = "fake-reddit-client-id"
    client_secret: str = "fake-reddit-client-secret"
    posts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by lower-case subreddit name
    missing_subreddits: set[str] = field(default_factory=set)  # answer 404, as for a banned subreddit
    page_size: int = 100  # Reddit's own cap on `limit`; lower it to force pagination
    comments: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # top-level comments by post id
    requests: list[RecordedRequest] = field(default_factory=list)
    issued_tokens: list[str] = field(default_factory=list)

    content_type: ClassVar[str] = "application/json; charset=UTF-8"

    def malformed_next(self, *, path: str | None = None) -> None:
        """A 200 whose body is cut-off JSON."""
        self.fail_next(200, body='{"kind": "Listing", "data": {"after": null, "children": [{"kind": "t3", ', path=path)

    def unexpected_next(self, *, path: str | None = None) -> None:
        """A 200 with valid JSON that is not a Listing."""
        self.fail_next(200, json_body={"status": "ok", "results": [{"headline": "not a listing"}]}, path=path)

    def listing_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/r/")]

    def thread_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.startswith("/comments/")]

    def token_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/v1/access_token"]

    # --- behaviour -------------------------------------------------------------------------------------------
    def _fault_body(self, status: int) -> Any:
        return {"message": "Error", "error": status}

    def _secrets(self) -> Iterable[str]:
        return (self.client_secret, *self.issued_tokens)

    def _answer(self, handler: LoopbackHandler, request: RecordedRequest) -> Reply:
        if request.method == "POST" and request.path == "/api/v1/access_token":
            return self._token(handler, parse_qs(handler.body.decode("utf-8", "replace")))
        if request.method == "GET" and request.path.startswith("/comments/"):
            return self._thread(handler, request.path, request.query)
        if request.method == "GET" and request.path.startswith("/r/"):
            status, payload, extra = self._listing(handler, request.path, request.query)
            return status, payload, {**self._rate_headers(), **extra}
        return 404, {"message": "Not Found", "error": 404}, {}

    def _token(self, handler: LoopbackHandler, form: dict[str, list[str]]) -> Reply:
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if handler.headers.get("Authorization", "") != f"Basic {expected}":
            return 401, {"message": "Unauthorized", "error": 401}, {}
        if form.get("grant_type") != ["client_credentials"]:
            return 400, {"error": "unsupported_grant_type"}, {}
        token = f"fake-app-token-{secrets.token_hex(8)}"
        with self._lock:
            self.issued_tokens.append(token)
        return 200, {"access_token": token, "token_type": "bearer", "expires_in": 86400, "scope": "*"}, {}

    def _unauthorised(self, handler: LoopbackHandler) -> Reply | None:
        auth = handler.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer ") or auth[7:] not in self.issued_tokens:
            challenge = {"www-authenticate": 'Bearer realm="reddit", error="invalid_token"'}
            return 401, {"message": "Unauthorized", "error": 401}, challenge
        return None

    def _thread(self, handler: LoopbackHandler, path: str, query: dict[str, list[str]]) -> Reply:
        refused = self._unauthorised(handler)
        if refused is not None:
            return refused
        post_id = path.strip("/").split("/")[1] if path.count("/") >= 2 else ""
        post = next((p for posts in self.posts.values() for p in posts if p["id"] == post_id), None)
        if post is None:
            return 404, {"message": "Not Found", "error": 404}, {}
        comments = list(self.comments.get(post_id, []))
        sort = query.get("sort", ["confidence"])[0]
        if sort == "top":
            comments.sort(key=lambda c: -c["score"])
        elif sort == "new":
            comments.sort(key=lambda c: -c["created_utc"])
        limit = int(query.get("limit", ["200"])[0])
        shown, rest = comments[:limit], comments[limit:]
        children: list[dict[str, Any]] = [{"kind": "t1", "data": c} for c in shown]
        if rest:
            # What Reddit sends for the comments beyond the limit: a stub that "load more" would expand.
            children.append({"kind": "more", "data": {
                "count": len(rest), "name": f"t1_{rest[0]['id']}", "id": rest[0]["id"], "parent_id": f"t3_{post_id}",
                "depth": 0, "children": [c["id"] for c in rest]}})
        listing = [
            {"kind": "Listing", "data": {"modhash": None, "dist": 1, "after": None, "before": None,
                                         "children": [{"kind": "t3", "data": post}]}},
            {"kind": "Listing", "data": {"modhash": None, "dist": None, "after": None, "before": None,
                                         "children": children}},
        ]
        return 200, listing, self._rate_headers()

    def _listing(self, handler: LoopbackHandler, path: str, query: dict[str, list[str]]) -> Reply:
        refused = self._unauthorised(handler)
        if refused is not None:
            return refused
        parts = path.strip("/").split("/")
        if len(parts) != 3 or parts[2] not in ("hot", "top", "new"):
            return 404, {"message": "Not Found", "error": 404}, {}
        name, sort = parts[1].lower(), parts[2]
        if name in {s.lower() for s in self.missing_subreddits}:
            return 404, {"message": "Not Found", "error": 404, "reason": "banned"}, {}
        posts = list(self.posts.get(name, []))
        if sort == "top":
            posts.sort(key=lambda p: -p["score"])
        elif sort == "new":
            posts.sort(key=lambda p: -p["created_utc"])
        limit = min(int(query.get("limit", ["25"])[0]), 100, self.page_size)
        after = query.get("after", [None])[0]
        start = 0
        if after:
            names = [p["name"] for p in posts]
            start = names.index(after) + 1 if after in names else len(posts)
        page = posts[start : start + limit]
        next_after = page[-1]["name"] if page and start + limit < len(posts) else None
        body = {
            "kind": "Listing",
            "data": {
                "after": next_after,
                "dist": len(page),
                "modhash": None,
                "geo_filter": "",
                "children": [{"kind": "t3", "data": post} for post in page],
                "before": None,
            },
        }
        return 200, body, {}

    def _rate_headers(self) -> dict[str, str]:
        used = len(self.listing_requests())
        return {
            "x-ratelimit-remaining": f"{max(0, 600 - used)}.0",
            "x-ratelimit-used": str(used),
            "x-ratelimit-reset": "300",
        }

