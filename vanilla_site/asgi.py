"""
The ASGI entry point daphne serves: HTTP goes to Django, websockets to
Pub-Sub through, from the outside in: the socket probe (``pubsub.backpressure``,
outermost, as it needs daphne's own ``send``), the Origin check, and sign-in
by access token or session (``pubsub.auth``).
"""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vanilla_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from pubsub.auth import OriginValidator, SignInMiddleware  # noqa: E402
from pubsub.backpressure import SocketMiddleware  # noqa: E402
from pubsub.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SocketMiddleware(
            OriginValidator.for_allowed_hosts(
                SignInMiddleware(URLRouter(websocket_urlpatterns))
            )
        ),
    }
)

# Everything loaded so far (Django, Twisted, the apps: most of the process's
# objects) lives as long as the process. Frozen, it is left out of the
# collector's full passes, which otherwise walked it all and stopped the
# event loop for 70-80 ms, twice in 20 s of subscribe churn (bench scenario 5).
gc.freeze()
