from django.apps import AppConfig


class PubSubConfig(AppConfig):
    name = "pubsub"
    verbose_name = "Pub-Sub"
