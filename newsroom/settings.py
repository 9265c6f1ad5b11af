"""Newsroom settings: one module, every deployment difference comes from the environment (or `.env`)."""
from __future__ import annotations

import math
import zoneinfo
from decimal import Decimal, InvalidOperation
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
# Real environment variables win over the file: read_env only fills in what is unset.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)


def env_number(name: str, *, default, minimum, maximum, kind: type = int, unit: str = ""):
    """The numeric setting `name` from the environment: a `kind` (int, float or Decimal), finite, from `minimum` to
    `maximum`; `default` when unset or empty (None: not set). Anything else stops start-up with one line naming the
    variable, its value and the allowed range, instead of a traceback or a value that breaks something later."""
    raw = env.str(name, default="").strip()
    if not raw:
        return default
    what = {int: "a whole number", float: "a number", Decimal: "a number"}[kind]
    allowed = f"it must be {what}{unit} from {minimum:,} to {maximum:,}"
    shown = raw if len(raw) <= 40 else f"{raw[:39]}…"
    try:
        value = kind(raw)
    except (ValueError, InvalidOperation):
        raise ImproperlyConfigured(f"{name}={shown!r} is not {what}: {allowed}.") from None
    if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)):
        raise ImproperlyConfigured(f"{name}={shown!r} is not a finite number: {allowed}.")
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name}={shown!r} is out of range: {allowed}.")
    return value


# The largest budget any setting or `runbatch --budget` accepts; budgets are stored with 6 decimal places in
# 14 digits, so this leaves room for every sum of them.
MAX_BUDGET_USD = Decimal(1_000_000)
MIN_BUDGET_USD = Decimal("0.000001")

DEBUG = env.bool("DJANGO_DEBUG", default=False)

SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it in the environment (or .env); "
            "only DJANGO_DEBUG=1 development runs may go without one."
        )
    SECRET_KEY = "django-insecure-development-only-key-never-used-in-production"

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "topics.apps.TopicsConfig",
    "batches.apps.BatchesConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "newsroom.urls"
WSGI_APPLICATION = "newsroom.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

VAR_DIR.mkdir(exist_ok=True)
# Checked whatever the database, so a bad value is caught before it is ever used.
DATABASE_CONN_MAX_AGE = env_number("DATABASE_CONN_MAX_AGE", default=60, minimum=0, maximum=86400, unit=" of seconds")
DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'newsroom.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take SQLite's write lock at BEGIN, which is what serialises budget
    # reservations between worker processes; WAL keeps readers (the admin) unblocked meanwhile.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", DATABASE_CONN_MAX_AGE)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
# The desk's time zone: times are stored in UTC and shown in this zone, with its name (newsroom/formats).
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
FORMAT_MODULE_PATH = ["newsroom.formats"]
try:
    zoneinfo.ZoneInfo(TIME_ZONE)
except (ValueError, zoneinfo.ZoneInfoNotFoundError) as exc:
    raise ImproperlyConfigured(
        f"TIME_ZONE={TIME_ZONE!r} is not a time zone name (for example UTC, Europe/Berlin, America/New_York)."
    ) from exc
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# Security: production values unless DJANGO_DEBUG is on; each can be overridden (e.g. behind a TLS proxy).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("DJANGO_CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env_number(
    "DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000, minimum=0, maximum=63072000, unit=" of seconds"
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="WARNING")},
    "loggers": {
        "newsroom": {"level": env.str("LOG_LEVEL", default="INFO"), "propagate": True},
        # httpx logs every request URL at INFO; keep it quiet so nothing sensitive leaks by default.
        "httpx": {"level": "WARNING"},
        # trafilatura logs every page it cannot extract as an ERROR; source material records why instead.
        "trafilatura": {"level": "CRITICAL"},
    },
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://localhost/")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
# Checked whatever the broker; Redis uses it (below).
CELERY_VISIBILITY_TIMEOUT = env_number(
    "CELERY_VISIBILITY_TIMEOUT", default=3600, minimum=1, maximum=604800, unit=" of seconds"
)
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport: a queue in files under var/, so a real worker runs with no broker server.
    # The transport does not create its folders itself.
    for _folder in ("queue", "processed", "control"):
        (BROKER_DIR / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # A message a killed worker held comes back after this long (acks_late + visibility timeout).
        "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    }
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = env_number(
    "CELERY_BROKER_CONNECTION_MAX_RETRIES", default=10, minimum=0, maximum=1000
)
# Publishing gives up after about two seconds when the broker is down: the caller gets an error, not a hang.
CELERY_TASK_PUBLISH_RETRY = True
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes the database connection before and after every task unless this is set: a new
# PostgreSQL backend (a fork, authentication, cold catalogue caches) for each draft, ~30 ms before its claim on the
# development machine. With it set, newsroom/celery.py keeps a connection across tasks as Django keeps one across
# requests (CONN_MAX_AGE, a health check at each task's first query) and closes it after any task that did not
# succeed, which may have been interrupted mid-query; the fixup still closes it after this many tasks.
CELERY_DB_REUSE_MAX = env_number("CELERY_DB_REUSE_MAX", default=1000, minimum=0, maximum=1_000_000)
CELERY_TASK_ALWAYS_EAGER = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
# Periodic tasks (the sweeper every minute, discovery on Mondays and Thursdays) are django-celery-beat schedules,
# seeded by a migration and editable in the admin; `celery -A newsroom beat` reads them from the database.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"

# --- Newsroom -----------------------------------------------------------------------------------
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
ANTHROPIC_MODEL = env.str("ANTHROPIC_MODEL", default="claude-sonnet-4-6")
# 128,000: the most output tokens any current Claude model returns in one answer.
ANTHROPIC_MAX_TOKENS = env_number("ANTHROPIC_MAX_TOKENS", default=2048, minimum=1, maximum=128000)
ANTHROPIC_TIMEOUT_SECONDS = env_number(
    "ANTHROPIC_TIMEOUT_SECONDS", default=120.0, minimum=0.1, maximum=3600, kind=float, unit=" of seconds"
)
ANTHROPIC_MAX_RETRIES = env_number("ANTHROPIC_MAX_RETRIES", default=3, minimum=0, maximum=20)
ANTHROPIC_RETRY_BASE_SECONDS = env_number(
    "ANTHROPIC_RETRY_BASE_SECONDS", default=2.0, minimum=0, maximum=600, kind=float, unit=" of seconds"
)
ANTHROPIC_RETRY_MAX_SECONDS = env_number(
    "ANTHROPIC_RETRY_MAX_SECONDS", default=60.0, minimum=0, maximum=3600, kind=float, unit=" of seconds"
)

BATCH_BUDGET_USD = env_number(
    "BATCH_BUDGET_USD", default=Decimal(40), minimum=MIN_BUDGET_USD, maximum=MAX_BUDGET_USD, kind=Decimal,
    unit=" in USD",
)
BATCH_SIZE = env_number("BATCH_SIZE", default=8, minimum=1, maximum=100)
# Unset (empty) means no monthly cap.
MONTHLY_BUDGET_USD = env_number(
    "MONTHLY_BUDGET_USD", default="", minimum=MIN_BUDGET_USD, maximum=MAX_BUDGET_USD, kind=Decimal, unit=" in USD"
)

REDDIT_CLIENT_ID = env.str("REDDIT_CLIENT_ID", default="")
REDDIT_CLIENT_SECRET = env.str("REDDIT_CLIENT_SECRET", default="")
REDDIT_BASE_URL = env.str("REDDIT_BASE_URL", default="")
PERPLEXITY_API_KEY = env.str("PERPLEXITY_API_KEY", default="")
PERPLEXITY_BASE_URL = env.str("PERPLEXITY_BASE_URL", default="https://api.perplexity.ai")
TUBELAB_API_KEY = env.str("TUBELAB_API_KEY", default="")
TUBELAB_BASE_URL = env.str("TUBELAB_BASE_URL", default="https://public-api.tubelab.net/v1")
APIFY_TOKEN = env.str("APIFY_TOKEN", default="")
APIFY_BASE_URL = env.str("APIFY_BASE_URL", default="https://api.apify.com")
# Source tuning: set only when given, so each source's own default applies otherwise (see topics/sources/).
for _name in ("REDDIT_SUBREDDITS", "REDDIT_TIME_FILTER", "PERPLEXITY_MODEL", "TUBELAB_QUERIES", "APIFY_ACTOR_ID"):
    if _name in env:
        globals()[_name] = env.str(_name)
# The numeric ones are checked like every other number; prices stay strings, as the sources read them.
if env.str("REDDIT_MIN_SCORE", default=""):
    REDDIT_MIN_SCORE = env_number("REDDIT_MIN_SCORE", default=None, minimum=0, maximum=10_000_000)
for _name, _minimum, _maximum in (
    ("PERPLEXITY_USD_PER_MILLION_INPUT", 0, 1000), ("PERPLEXITY_USD_PER_MILLION_OUTPUT", 0, 1000),
    ("PERPLEXITY_USD_PER_REQUEST", 0, 100), ("TUBELAB_USD_PER_CREDIT", 0, 100),
    ("APIFY_MAX_CHARGE_USD", MIN_BUDGET_USD, 1000),
):
    if env.str(_name, default=""):
        globals()[_name] = str(env_number(_name, default=None, minimum=_minimum, maximum=_maximum, kind=Decimal,
                                          unit=" in USD"))

# --- Recovery: leases, the sweeper, the answer spool ---------------------------------------------
# An item being drafted holds a lease. It must outlive the longest the drafting can take (a token count and every
# attempt at the call, each up to the timeout, the backoff between them, and writing the answer across a database
# blip), so a slow call is never taken back and drafted twice; the task's time limits sit just above it.
ANSWER_WRITE_RETRY_SECONDS = env_number(
    "ANSWER_WRITE_RETRY_SECONDS", default=30.0, minimum=0, maximum=3600, kind=float, unit=" of seconds"
)
_attempts = ANTHROPIC_MAX_RETRIES + 1
_backoff = sum(min(ANTHROPIC_RETRY_BASE_SECONDS * 2**i, ANTHROPIC_RETRY_MAX_SECONDS) for i in range(_attempts - 1))
ITEM_LEASE_SECONDS = env_number(
    "ITEM_LEASE_SECONDS",
    default=int(ANTHROPIC_TIMEOUT_SECONDS * (_attempts + 1) + _backoff + ANSWER_WRITE_RETRY_SECONDS + 30),
    minimum=1, maximum=604800, unit=" of seconds",
)
CELERY_TASK_SOFT_TIME_LIMIT = env_number(
    "CELERY_TASK_SOFT_TIME_LIMIT", default=ITEM_LEASE_SECONDS + 30, minimum=1, maximum=604800, unit=" of seconds"
)
CELERY_TASK_TIME_LIMIT = env_number(
    "CELERY_TASK_TIME_LIMIT", default=ITEM_LEASE_SECONDS + 60, minimum=1, maximum=604800, unit=" of seconds"
)
# How many times an item may be claimed (first try plus take-backs after lost leases) before it fails for good.
ITEM_MAX_CLAIMS = env_number("ITEM_MAX_CLAIMS", default=3, minimum=1, maximum=100)
# A queued batch or item that nothing has picked up for this long is published again by the sweeper.
SWEEP_STALE_SECONDS = env_number("SWEEP_STALE_SECONDS", default=180, minimum=1, maximum=86400, unit=" of seconds")
# Answers that could not be written during a database outage wait here (one JSON file each) for the sweeper.
ANSWER_SPOOL_DIR = Path(env.str("ANSWER_SPOOL_DIR", default=str(VAR_DIR / "spool" / "answers")))
# Input tokens can come back higher than count_tokens said (Anthropic documents it as an estimate): each
# reservation adds this fraction of the counted input (or of its upper bound, batches.generation.input_tokens_bound),
# plus RESERVATION_INPUT_EXTRA_TOKENS, as a safety margin.
RESERVATION_INPUT_MARGIN = env_number(
    "RESERVATION_INPUT_MARGIN", default=Decimal("0.10"), minimum=0, maximum=10, kind=Decimal
)
RESERVATION_INPUT_EXTRA_TOKENS = env_number(
    "RESERVATION_INPUT_EXTRA_TOKENS", default=100, minimum=0, maximum=1_000_000
)

# --- Import ---------------------------------------------------------------------------------------
# The largest file `import_topics` reads (checked before reading a byte). The import streams, so memory does not
# grow with the file; the cap keeps a mistaken path (a disk image, a log) from tying up the database for hours.
IMPORT_MAX_BYTES = env_number("IMPORT_MAX_BYTES", default=512 * 1024 * 1024, minimum=1, maximum=2**40,
                              unit=" of bytes")

# --- The local stand-in for Claude ----------------------------------------------------------------
# `make serve` without ANTHROPIC_API_KEY starts batches/claude_standin.py on this port and sets CLAUDE_STANDIN=1:
# drafts are then placeholder prose from loopback, never Claude, and every desk page says so.
STANDIN_PORT = env_number("STANDIN_PORT", default=8765, minimum=1, maximum=65535)
CLAUDE_STANDIN = env.bool("CLAUDE_STANDIN", default=False)
if CLAUDE_STANDIN:
    ANTHROPIC_BASE_URL = f"http://127.0.0.1:{STANDIN_PORT}"
    ANTHROPIC_API_KEY = "standin-key-not-a-secret"  # the SDK insists on a key; a real one never goes to the stand-in

# --- Source material (issue 9): what each draft is written from --------------------------------------------
# Tokens of source material per topic in the drafting prompt (best sources first; the rest is cut).
MATERIAL_MAX_TOKENS = env_number("MATERIAL_MAX_TOKENS", default=6000, minimum=0, maximum=200_000, unit=" of tokens")
# A topic's gathered material is reused for this many days before its pages are fetched again.
MATERIAL_REUSE_DAYS = env_number("MATERIAL_REUSE_DAYS", default=7, minimum=0, maximum=365, unit=" of days")
# One paid Perplexity research request per topic (needs PERPLEXITY_API_KEY), charged to the batch's budget.
RESEARCH_WITH_PERPLEXITY = env.bool("RESEARCH_WITH_PERPLEXITY", default=False)
# Fetch source pages from private, loopback and link-local addresses: only tests and the demo set it.
SOURCE_FETCH_ALLOW_PRIVATE = env.bool("SOURCE_FETCH_ALLOW_PRIVATE", default=False)
# How many of a Reddit thread's best top-level comments join its post as material.
REDDIT_COMMENTS_PER_POST = env_number("REDDIT_COMMENTS_PER_POST", default=10, minimum=0, maximum=100)

# --- Economy batches (Message Batches API) --------------------------------------------------------
# How a batch is drafted when nobody says: `now` (Messages API, one call per item) or `economy` (one Message Batch
# at half price, results within 24 h).
BATCH_DELIVERY = env.str("BATCH_DELIVERY", default="now")
if BATCH_DELIVERY not in ("now", "economy"):
    raise ImproperlyConfigured(f"BATCH_DELIVERY={BATCH_DELIVERY!r} must be `now` or `economy`.")
# A submitted Message Batch is asked about first after ECONOMY_POLL_MIN_SECONDS, then twice as late each time, up
# to ECONOMY_POLL_MAX_SECONDS between two questions.
ECONOMY_POLL_MIN_SECONDS = env_number("ECONOMY_POLL_MIN_SECONDS", default=30.0, minimum=0, maximum=86400, kind=float)
ECONOMY_POLL_MAX_SECONDS = env_number("ECONOMY_POLL_MAX_SECONDS", default=600.0, minimum=0, maximum=86400, kind=float)
# A create whose outcome was unknown (timeout, dropped connection) and that no listing shows this long after it
# was sent is taken as never created, and sent again.
ECONOMY_ABSENT_AFTER_SECONDS = env_number("ECONOMY_ABSENT_AFTER_SECONDS", default=900.0, minimum=0, maximum=7 * 86400,
                                          kind=float)
# A submitted Message Batch (or its results) that Anthropic answers 404 for this long without a break is given up:
# its open requests keep their reservations as spent (they may have been billed) and their items fail. Shorter
# 404s (right after the create, around the end) are asked about again. At least a minute; at most 30 days.
ECONOMY_GONE_AFTER_SECONDS = env_number("ECONOMY_GONE_AFTER_SECONDS", default=86400.0, minimum=60, maximum=30 * 86400,
                                        kind=float)
