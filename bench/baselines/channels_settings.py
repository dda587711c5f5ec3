"""Settings of the stock Channels baseline: Channels and its Redis layer only."""
from . import PREFIX, REDIS_URL

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1"]
INSTALLED_APPS = ["channels"]
ASGI_APPLICATION = "bench.baselines.channels_app.application"
USE_TZ = True

# The layer exactly as vanilla_site.settings configures it, on our own prefix.
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {"address": REDIS_URL, "max_connections": 1000, "socket_timeout": 30}
            ],
            "prefix": f"{PREFIX}-layer:",
            "group_expiry": 120,
        },
    }
}
