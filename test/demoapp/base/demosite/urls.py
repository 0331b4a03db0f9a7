from django.conf import settings
from django.urls import path

from notes import views


def sentry_debug(request):
    """Fails on purpose, as Sentry's setup guide suggests, to show that errors reach
    Sentry."""
    raise ZeroDivisionError("sentry-debug: an error raised on purpose")


urlpatterns = [
    path("", views.index, name="index"),
    path("healthz/", views.healthz, name="healthz"),
]
if settings.SENTRY_DSN:
    urlpatterns.append(path("sentry-debug/", sentry_debug, name="sentry-debug"))
