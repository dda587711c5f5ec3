"""
Settings for Vanilla.

Every setting an operator may change is read from an environment variable named
``VANILLA_*``; the defaults run everything on loopback with SQLite, which is what
the demo and the tests use. The README has the full table.
"""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env(name, default=None):
    return os.environ.get(f"VANILLA_{name}", default)


def env_bool(name, default):
    value = env(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"VANILLA_{name} must be a boolean, got {value!r}")


def env_number(name, default, kind=int):
    value = env(name)
    if value is None:
        return default
    try:
        return kind(value)
    except ValueError:
        raise ImproperlyConfigured(
            f"VANILLA_{name} must be a {kind.__name__}, got {value!r}"
        ) from None


def env_list(name, default):
    value = env(name)
    if value is None:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


# --- Core ---------------------------------------------------------------------

DEVELOPMENT_SECRET_KEY = "vanilla-development-only-not-secret"
DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env("SECRET_KEY", DEVELOPMENT_SECRET_KEY)
if not DEBUG and SECRET_KEY in (DEVELOPMENT_SECRET_KEY, ""):
    raise ImproperlyConfigured(
        "VANILLA_SECRET_KEY must be set when VANILLA_DEBUG is off: "
        "refusing to run in production with the development secret key."
    )
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_celery_beat",
    "pubsub",
    "datasources",
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

ROOT_URLCONF = "vanilla_site.urls"
ASGI_APPLICATION = "vanilla_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "vanilla_site" / "templates"],
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

DATABASES = {
    "default": {
        "ENGINE": env("DB_ENGINE", "django.db.backends.sqlite3"),
        "NAME": env("DB_NAME", str(BASE_DIR / "db.sqlite3")),
        "USER": env("DB_USER", ""),
        "PASSWORD": env("DB_PASSWORD", ""),
        "HOST": env("DB_HOST", ""),
        "PORT": env("DB_PORT", ""),
        # SQLite is shared by daphne, Celery and the topology runner: wait for
        # a lock instead of failing at once. A transaction takes the write lock
        # when it begins: one that read first and wrote later could not wait
        # for it (SQLite fails such an upgrade at once: "database is locked"
        # on a demo's first subscription, while beat wrote its schedule).
        "OPTIONS": (
            {"timeout": 20, "transaction_mode": "IMMEDIATE"}
            if "sqlite" in env("DB_ENGINE", "sqlite")
            else {}
        ),
        # A file, so that the processes the tests start share the test data.
        "TEST": {
            "NAME": env("TEST_DB_NAME", str(BASE_DIR / ".services" / "test.sqlite3"))
        },
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "vanilla_site" / "static"]
# Static files are served by the app itself (WhiteNoise): from the source
# folders while developing, from collectstatic's output in production.
WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# --- Services -----------------------------------------------------------------

REDIS_URL = env("REDIS_URL", "redis://127.0.0.1:6390/0")
KAFKA_BOOTSTRAP_SERVERS = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py's async pool refuses a 101st connection instead of
            # waiting; a burst of websockets needs more room than that.
            "hosts": [
                {
                    "address": REDIS_URL,
                    "max_connections": env_number("REDIS_MAX_CONNECTIONS", 1000),
                    # redis-py 8 gives up reading after 5 s by default, the
                    # same 5 s that channels-redis blocks in BZPOPMIN for:
                    # without more room an idle consumer dies at random.
                    "socket_timeout": 30,
                }
            ],
            "prefix": "vanilla-layer:",
            # A dead connection's group entries expire after this long.
            "group_expiry": 120,
        },
    }
}

CELERY_BROKER_URL = env("CELERY_BROKER_URL", REDIS_URL)
# One queue name per deployment, so that two Vanillas can share a Redis.
CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", "vanilla")
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat looks for edited or new schedules at least this often (seconds).
CELERY_BEAT_MAX_LOOP_INTERVAL = env_number("BEAT_MAX_LOOP_INTERVAL", 1)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"

# --- Vanilla ------------------------------------------------------------------

VANILLA = {
    # Where Pub-Sub looks data sources up: an object with get(name).
    "SOURCE_REGISTRY": "datasources.registry.registry",
    # Prefix of every Redis key and channel Vanilla uses.
    "REDIS_PREFIX": env("REDIS_PREFIX", "vanilla"),
    # A server process's subscriptions vanish this long after it dies (s).
    "PROCESS_LEASE": env_number("PROCESS_LEASE", 30.0, float),
    # A source keeps running this long after its last subscriber left (s).
    "STOP_GRACE": env_number("STOP_GRACE", 5.0, float),
    # How often each process renews its lease and looks for due work (s).
    "JANITOR_INTERVAL": env_number("JANITOR_INTERVAL", 1.0, float),
    # Publications kept per topic for resume, unless a source says otherwise.
    "HISTORY_SIZE": env_number("HISTORY_SIZE", 1000),
    # Larger publications are refused; daphne sends at most 1 MiB a message.
    "MAX_PUBLICATION_BYTES": env_number("MAX_PUBLICATION_BYTES", 1_000_000),
    # Limits on what one connection may do.
    "MAX_FRAME_BYTES": env_number("MAX_FRAME_BYTES", 64 * 1024),
    "MAX_PARAMS_BYTES": env_number("MAX_PARAMS_BYTES", 4 * 1024),
    "MAX_SUBSCRIPTIONS": env_number("MAX_SUBSCRIPTIONS", 100),
    "MAX_CONNECTIONS": env_number("MAX_CONNECTIONS", 10000),
    "OUTBOX_SIZE": env_number("OUTBOX_SIZE", 1000),
    "RATE_LIMIT": env_number("RATE_LIMIT", 50.0, float),
    "RATE_BURST": env_number("RATE_BURST", 200),
    # Live connections whose access token was revoked close within this (s).
    "TOKEN_CHECK_INTERVAL": env_number("TOKEN_CHECK_INTERVAL", 2.0, float),
    # Redis connections a server process opens for commands, beside its one
    # subscriber connection; more commands wait for one to be free.
    "REDIS_CONNECTIONS": env_number("REDIS_CONNECTIONS", 32),
    # Seconds between fetches of scheduled sources, by name ("weather=2,...").
    "INTERVALS": {
        name.strip(): float(every)
        for name, _, every in (
            item.partition("=") for item in env_list("INTERVALS", [])
        )
    },
    # Where the demo's flight and weather files are.
    "DEMO_DATA_DIR": env("DEMO_DATA_DIR", str(BASE_DIR / "demo_data")),
}

# --- Production hardening -----------------------------------------------------

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    SECURE_SSL_REDIRECT = env_bool("SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = env_number("HSTS_SECONDS", 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", False)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    if not SECURE_HSTS_PRELOAD:
        # Preloading binds every subdomain to HTTPS for months and cannot be
        # undone quickly: an operator opts in (VANILLA_HSTS_PRELOAD=1), so
        # check --deploy is not told to insist on it.
        SILENCED_SYSTEM_CHECKS = ["security.W021"]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain"},
    },
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
    },
}

CELERY_BEAT_SCHEDULE = {
    "vanilla-upkeep": {"task": "pubsub.tasks.upkeep", "schedule": 5.0},
}
