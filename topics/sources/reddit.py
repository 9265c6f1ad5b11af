"""Reddit: hot and top posts from e-commerce subreddits, through PRAW with an app-only (client credentials) token."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import praw
import prawcore
import requests

from topics.sources.base import (
    Candidate,
    SourceError,
    SpendMeter,
    clip,
    error_for_status,
    json_safe,
    malformed_json_error,
    redact,
    setting_list,
    unexpected_shape_error,
    unreachable_error,
)

LABEL = "Reddit"
DEFAULT_SUBREDDITS = ("ecommerce", "shopify", "FulfillmentByAmazon", "dropship", "Entrepreneur", "smallbusiness")
DEFAULT_TOKEN_URL = "https://www.reddit.com"
DEFAULT_API_URL = "https://oauth.reddit.com"
DEFAULT_USER_AGENT = "python:newsroom-discovery:1.0 (e-commerce newsletter topic discovery)"
LISTINGS = ("hot", "top")
# Reddit's `t` values and the age they stand for; hot posts are held to the same window.
TIME_FILTERS: dict[str, timedelta | None] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(days=7),
    "month": timedelta(days=31),
    "year": timedelta(days=366),
    "all": None,
}
# What PRAW, prawcore and requests raise for a failed call or a body we cannot read; each is translated.
_CLIENT_ERRORS = (
    prawcore.exceptions.PrawcoreException,
    requests.exceptions.RequestException,
    ValueError,
    TypeError,
    KeyError,
    AttributeError,
)
REMOVED_MARKERS = frozenset({"[removed]", "[deleted]"})
# The post fields kept in Candidate.raw: enough to audit a topic without storing Reddit's ~100 fields.
RAW_FIELDS = tuple(
    "id name title selftext url permalink domain score ups upvote_ratio num_comments created_utc is_self over_18 "
    "link_flair_text stickied removed_by_category distinguished".split()
)


@dataclass(frozen=True)
class RedditThread:
    """A post and its best top-level comments (score, text), best first."""

    post_id: str
    title: str
    text: str
    url: str
    link: str  # the page a link post points to; "" for a text post
    comments: list[tuple[int, str]]


def _comment_dropped(comment: Any) -> bool:
    """Moderator notes, stickied bot comments and removed or deleted comments are not material."""
    author = str(getattr(comment, "author", "") or "")
    return bool(
        getattr(comment, "stickied", False)
        or getattr(comment, "distinguished", None) == "moderator"
        or author.lower() == "automoderator"
        or (getattr(comment, "body", "") or "").strip() in REMOVED_MARKERS
        or not (getattr(comment, "body", "") or "").strip()
    )


class RedditSource:
    """Hot and top posts of a window from a list of subreddits, minus stickied, removed and low-engagement posts."""

    name = "reddit"
    paid = False

    def __init__(
        self,
        *,
        client_id: str = "",
        client_secret: str = "",
        base_url: str = "",
        subreddits: Sequence[str] = DEFAULT_SUBREDDITS,
        time_filter: str = "week",
        min_score: int = 10,
        min_comments: int = 0,
        per_listing: int = 50,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: int = 16,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        if time_filter not in TIME_FILTERS:
            raise ValueError(f"time_filter must be one of {', '.join(TIME_FILTERS)}, not {time_filter!r}")
        self.client_id = client_id
        self.client_secret = client_secret
        self.base_url = base_url.rstrip("/")
        self.subreddits = [s.strip().removeprefix("r/") for s in subreddits if s.strip()]
        self.time_filter = time_filter
        self.min_score = min_score
        self.min_comments = min_comments
        self.per_listing = per_listing
        self.user_agent = user_agent
        self.timeout = timeout
        self._now = now or (lambda: datetime.now(UTC))

    @classmethod
    def from_settings(cls, settings: Any) -> RedditSource:
        """Build from Django settings (REDDIT_*), with defaults for anything unset."""
        return cls(
            client_id=getattr(settings, "REDDIT_CLIENT_ID", "") or "",
            client_secret=getattr(settings, "REDDIT_CLIENT_SECRET", "") or "",
            base_url=getattr(settings, "REDDIT_BASE_URL", "") or "",
            subreddits=setting_list(getattr(settings, "REDDIT_SUBREDDITS", None) or DEFAULT_SUBREDDITS),
            time_filter=getattr(settings, "REDDIT_TIME_FILTER", "") or "week",
            min_score=int(getattr(settings, "REDDIT_MIN_SCORE", 10)),
            min_comments=int(getattr(settings, "REDDIT_MIN_COMMENTS", 0)),
            per_listing=int(getattr(settings, "REDDIT_PER_LISTING", 50)),
            user_agent=getattr(settings, "REDDIT_USER_AGENT", "") or DEFAULT_USER_AGENT,
        )

    @property
    def token_url(self) -> str:
        return self.base_url or DEFAULT_TOKEN_URL

    @property
    def api_url(self) -> str:
        # Reality splits the token exchange (www) from the API (oauth); one override serves both, for proxies and tests.
        return self.base_url or DEFAULT_API_URL

    def is_configured(self) -> bool:
        return bool(self.client_id and self.client_secret and self.subreddits)

    def describe(self) -> str:
        return (
            f"Reddit: hot/top posts of the past {self.time_filter} from {len(self.subreddits)} subreddits "
            f"(score ≥ {self.min_score})"
        )

    def fetch(self, *, limit: int, meter: SpendMeter, run_token: str | None = None) -> list[Candidate]:
        """Up to `limit` posts, the best of each subreddit first, taking subreddits in turn.

        Reddit is free: the meter is not used.
        """
        reddit = self._client()
        per_subreddit: list[list[Candidate]] = []
        seen: set[str] = set()
        for subreddit in self.subreddits:
            posts: list[Candidate] = []
            for listing in LISTINGS:
                for candidate in self._read_listing(reddit, subreddit, listing, gathered=per_subreddit):
                    if candidate.external_id not in seen:
                        seen.add(candidate.external_id)
                        posts.append(candidate)
            posts.sort(key=lambda c: (-c.engagement["score"], -c.engagement["comments"], c.external_id))
            per_subreddit.append(posts)
        # Taking subreddits in turn keeps the biggest one from crowding the others out.
        interleaved = [c for row in itertools.zip_longest(*per_subreddit) for c in row if c is not None]
        return interleaved[:limit]

    def _client(self) -> praw.Reddit:
        return praw.Reddit(
            client_id=self.client_id,
            client_secret=self.client_secret,
            user_agent=self.user_agent,
            reddit_url=self.token_url,
            oauth_url=self.api_url,
            timeout=self.timeout,
            check_for_updates=False,
            check_for_async=False,
        )

    def thread(self, *, post_id: str, comments: int) -> RedditThread:
        """A post's text and its best `comments` top-level comments (Reddit's "top" order), for source material.

        `replace_more(limit=0)` drops the "load more comments" stubs instead of paying a request for each: the
        first page of a thread sorted by top already holds its best comments.
        """
        where = f"thread {post_id}"
        try:
            submission = self._client().submission(id=post_id)
            submission.comment_sort = "top"
            submission.comment_limit = max(comments * 2, 10)
            submission.comments.replace_more(limit=0)
            best = [
                (int(comment.score), comment.body.strip())
                for comment in submission.comments  # iterating a comment forest yields its top-level comments
                if not _comment_dropped(comment)
            ][:comments]
            return RedditThread(
                post_id=post_id,
                title=clip(submission.title, 500),
                text=(submission.selftext or "").strip(),
                url=f"https://www.reddit.com{submission.permalink}",
                link=submission.url if not submission.is_self else "",
                comments=best,
            )
        except prawcore.exceptions.NotFound as exc:
            raise SourceError(f"{LABEL}: the thread {post_id} does not exist or was removed (HTTP 404)",
                              permanent=True) from exc
        except _CLIENT_ERRORS as exc:
            raise self._translate(exc, where=where) from exc

    def _read_listing(
        self, reddit: praw.Reddit, subreddit: str, listing: str, *, gathered: list[list[Candidate]]
    ) -> list[Candidate]:
        where = f"r/{subreddit}/{listing}"
        try:
            sub = reddit.subreddit(subreddit)
            if listing == "top":
                submissions = sub.top(time_filter=self.time_filter, limit=self.per_listing)
            else:
                submissions = sub.hot(limit=self.per_listing)
            return [c for c in (self._candidate(s) for s in submissions) if c is not None]
        except _CLIENT_ERRORS as exc:
            error = self._translate(exc, where=where)
            raise error.with_partial([c for row in gathered for c in row]) from exc

    def _translate(self, exc: Exception, *, where: str) -> SourceError:
        """A PRAW/prawcore/requests failure as a SourceError naming what failed, with no secret in it."""
        secrets = (self.client_secret,)
        if isinstance(exc, prawcore.exceptions.OAuthException):
            return SourceError(
                f"{LABEL}: the token exchange was refused ({clip(redact(str(exc.error), secrets), 80)}); "
                "check REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET",
                permanent=True,
            )
        if isinstance(exc, prawcore.exceptions.BadJSON):
            return malformed_json_error(label=LABEL, what=f"the {where} listing")
        if isinstance(exc, prawcore.exceptions.ResponseException):
            return self._translate_status(exc, where=where)
        if isinstance(exc, prawcore.exceptions.RequestException):
            original = exc.original_exception
            if isinstance(original, requests.exceptions.Timeout):
                problem = "timed out"
            elif isinstance(original, requests.exceptions.ConnectionError):
                problem = "connection failed"
            else:
                problem = type(original).__name__
            url = next((a for a in exc.request_args if isinstance(a, str) and "://" in a), self.api_url)
            host = urlsplit(url).netloc or url
            return unreachable_error(label=LABEL, host=host, problem=problem)
        if isinstance(exc, requests.exceptions.JSONDecodeError):
            # prawcore parses the token exchange itself, without its BadJSON wrapper.
            return malformed_json_error(label=LABEL, what="the token exchange response")
        problem = clip(redact(f"{type(exc).__name__}: {exc}", secrets), 160)
        return unexpected_shape_error(label=LABEL, what=f"the {where} response", problem=problem)

    def _translate_status(self, exc: prawcore.exceptions.ResponseException, *, where: str) -> SourceError:
        response = exc.response
        status = response.status_code
        if "/api/v1/access_token" in (response.url or ""):
            if status in (400, 401, 403):
                return SourceError(
                    f"{LABEL}: the client credentials were rejected at the token exchange (HTTP {status}); "
                    "check REDDIT_CLIENT_ID and REDDIT_CLIENT_SECRET",
                    permanent=True,
                )
            return error_for_status(label=LABEL, status=status, headers=response.headers)
        if isinstance(exc, (prawcore.exceptions.NotFound, prawcore.exceptions.Redirect)):
            return SourceError(
                f"{LABEL}: {where} does not exist or was banned (HTTP {status}); check REDDIT_SUBREDDITS",
                permanent=True,
            )
        if status == 403 and not isinstance(exc, prawcore.exceptions.InvalidToken):
            return SourceError(
                f"{LABEL}: {where} is private or quarantined (HTTP 403); check REDDIT_SUBREDDITS", permanent=True
            )
        if status in (401, 403):
            return SourceError(
                f"{LABEL}: the access token was rejected on {where} (HTTP {status}); check REDDIT_CLIENT_ID and "
                "REDDIT_CLIENT_SECRET",
                permanent=True,
            )
        return error_for_status(label=f"{LABEL} ({where})", status=status, headers=response.headers)

    def _candidate(self, submission: Any) -> Candidate | None:
        """The post as a Candidate, or None when it is filtered out."""
        if self._dropped(submission):
            return None
        subreddit = str(submission.subreddit)
        return Candidate(
            source=self.name,
            external_id=str(submission.id),
            title=clip(submission.title, 500),
            summary=clip(submission.selftext or "", 600),
            url=f"https://www.reddit.com{submission.permalink}",
            engagement={
                "score": float(submission.score),
                "comments": float(submission.num_comments),
                "upvote_ratio": float(getattr(submission, "upvote_ratio", 0.0) or 0.0),
            },
            published_at=datetime.fromtimestamp(float(submission.created_utc), tz=UTC),
            raw=self._raw(submission, subreddit=subreddit),
        )

    def _dropped(self, submission: Any) -> bool:
        if submission.stickied:
            return True
        if getattr(submission, "removed_by_category", None):
            return True
        if (submission.selftext or "").strip() in REMOVED_MARKERS or submission.title in REMOVED_MARKERS:
            return True
        if submission.score < self.min_score or submission.num_comments < self.min_comments:
            return True
        window = TIME_FILTERS[self.time_filter]
        if window is not None:
            published = datetime.fromtimestamp(float(submission.created_utc), tz=UTC)
            if published < self._now() - window:
                return True
        return False

    @staticmethod
    def _raw(submission: Any, *, subreddit: str) -> dict:
        raw: dict[str, Any] = {field: getattr(submission, field, None) for field in RAW_FIELDS}
        raw["subreddit"] = subreddit
        author = getattr(submission, "author", None)
        raw["author"] = str(author) if author is not None else None
        return json_safe(raw)
