from django.urls import path

from .consumers import SubscriptionConsumer

websocket_urlpatterns = [
    path("ws/", SubscriptionConsumer.as_asgi()),
]
