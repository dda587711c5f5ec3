from django.contrib import admin
from django.urls import path
from django.views.generic import TemplateView

from . import views

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="demo"),
    path("healthz", views.health, name="health"),
    path("admin/", admin.site.urls),
]
