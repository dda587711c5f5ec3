from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

from datasources.monitor import live_sources_view

from . import views

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="demo"),
    path("healthz", views.health, name="health"),
    path(
        "admin/live-sources/",
        admin.site.admin_view(lambda request: live_sources_view(request, admin.site)),
        name="live-sources",
    ),
    path("admin/", admin.site.urls),
    path("api/", include("pubsub.urls")),
]
