"""Newsroom settings: one module, every deployment difference comes from the environment (or `.env`)."""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
# Real environment variables win over the file: read_env only fills in what is unset.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

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
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
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
SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
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
    },
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://localhost/")
CELERY_BROKER_TRANSPORT_OPTIONS: dict = {}
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
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
        "socket_timeout": 5,
        "socket_connect_timeout": 3,
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    }
CELERY_BROKER_CONNECTION_TIMEOUT = 3
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = env.int("CELERY_BROKER_CONNECTION_MAX_RETRIES", default=10)
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
ANTHROPIC_MAX_TOKENS = env.int("ANTHROPIC_MAX_TOKENS", default=2048)
ANTHROPIC_TIMEOUT_SECONDS = env.float("ANTHROPIC_TIMEOUT_SECONDS", default=120.0)
ANTHROPIC_MAX_RETRIES = env.int("ANTHROPIC_MAX_RETRIES", default=3)
ANTHROPIC_RETRY_BASE_SECONDS = env.float("ANTHROPIC_RETRY_BASE_SECONDS", default=2.0)
ANTHROPIC_RETRY_MAX_SECONDS = env.float("ANTHROPIC_RETRY_MAX_SECONDS", default=60.0)

BATCH_BUDGET_USD = env.str("BATCH_BUDGET_USD", default="40")
BATCH_SIZE = env.int("BATCH_SIZE", default=8)
MONTHLY_BUDGET_USD = env.str("MONTHLY_BUDGET_USD", default="")

for _name in ("BATCH_BUDGET_USD", "MONTHLY_BUDGET_USD"):
    _value = globals()[_name]
    if _value:
        try:
            Decimal(_value)
        except ArithmeticError as exc:
            raise ImproperlyConfigured(f"{_name}={_value!r} is not a number of dollars.") from exc

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
for _name in ("REDDIT_SUBREDDITS", "REDDIT_TIME_FILTER", "REDDIT_MIN_SCORE", "PERPLEXITY_MODEL",
              "PERPLEXITY_USD_PER_MILLION_INPUT", "PERPLEXITY_USD_PER_MILLION_OUTPUT", "PERPLEXITY_USD_PER_REQUEST",
              "TUBELAB_QUERIES", "TUBELAB_USD_PER_CREDIT", "APIFY_ACTOR_ID", "APIFY_MAX_CHARGE_USD"):
    if _name in env:
        globals()[_name] = env.str(_name)

# --- Recovery: leases, the sweeper, the answer spool ---------------------------------------------
# An item being drafted holds a lease. It must outlive the longest the drafting can take (a token count and every
# attempt at the call, each up to the timeout, the backoff between them, and writing the answer across a database
# blip), so a slow call is never taken back and drafted twice; the task's time limits sit just above it.
ANSWER_WRITE_RETRY_SECONDS = env.float("ANSWER_WRITE_RETRY_SECONDS", default=30.0)
_attempts = ANTHROPIC_MAX_RETRIES + 1
_backoff = sum(min(ANTHROPIC_RETRY_BASE_SECONDS * 2**i, ANTHROPIC_RETRY_MAX_SECONDS) for i in range(_attempts - 1))
ITEM_LEASE_SECONDS = env.int(
    "ITEM_LEASE_SECONDS",
    default=int(ANTHROPIC_TIMEOUT_SECONDS * (_attempts + 1) + _backoff + ANSWER_WRITE_RETRY_SECONDS + 30),
)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=ITEM_LEASE_SECONDS + 30)
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=ITEM_LEASE_SECONDS + 60)
# How many times an item may be claimed (first try plus take-backs after lost leases) before it fails for good.
ITEM_MAX_CLAIMS = env.int("ITEM_MAX_CLAIMS", default=3)
# A queued batch or item that nothing has picked up for this long is published again by the sweeper.
SWEEP_STALE_SECONDS = env.int("SWEEP_STALE_SECONDS", default=180)
# Answers that could not be written during a database outage wait here (one JSON file each) for the sweeper.
ANSWER_SPOOL_DIR = Path(env.str("ANSWER_SPOOL_DIR", default=str(VAR_DIR / "spool" / "answers")))
# Input tokens can come back higher than count_tokens said (Anthropic documents it as an estimate): each
# reservation adds this fraction of the counted input, plus RESERVATION_INPUT_EXTRA_TOKENS, as a safety margin.
RESERVATION_INPUT_MARGIN = Decimal(env.str("RESERVATION_INPUT_MARGIN", default="0.10"))
RESERVATION_INPUT_EXTRA_TOKENS = env.int("RESERVATION_INPUT_EXTRA_TOKENS", default=100)

# --- Economy batches (Message Batches API) --------------------------------------------------------
# How a batch is drafted when nobody says: `now` (Messages API, one call per item) or `economy` (one Message Batch
# at half price, results within 24 h).
BATCH_DELIVERY = env.str("BATCH_DELIVERY", default="now")
if BATCH_DELIVERY not in ("now", "economy"):
    raise ImproperlyConfigured(f"BATCH_DELIVERY={BATCH_DELIVERY!r} must be `now` or `economy`.")
# A submitted Message Batch is asked about first after ECONOMY_POLL_MIN_SECONDS, then twice as late each time, up
# to ECONOMY_POLL_MAX_SECONDS between two questions.
ECONOMY_POLL_MIN_SECONDS = env.float("ECONOMY_POLL_MIN_SECONDS", default=30.0)
ECONOMY_POLL_MAX_SECONDS = env.float("ECONOMY_POLL_MAX_SECONDS", default=600.0)
# A create whose outcome was unknown (timeout, dropped connection) and that no listing shows this long after it
# was sent is taken as never created, and sent again.
ECONOMY_ABSENT_AFTER_SECONDS = env.float("ECONOMY_ABSENT_AFTER_SECONDS", default=900.0)
