"""The Celery app that runs scheduled DataSources (worker and beat)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vanilla_site.settings")

app = Celery("vanilla_site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
