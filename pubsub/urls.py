from django.urls import path

from . import views

app_name = "pubsub"

urlpatterns = [
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/", views.token, name="token"),
]
