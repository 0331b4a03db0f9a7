from django.conf import settings
from django.http import HttpResponse
from django.urls import path

from notes import views


def sentry_debug(request):
    """Fails on purpose, as Sentry's setup guide suggests, to show that errors reach
    Sentry."""
    raise ZeroDivisionError("sentry-debug: an error raised on purpose")


def scheme(request):
    """The scheme Django believes the client used (SECURE_PROXY_SSL_HEADER: what
    Nginx passes in X-Forwarded-Proto)."""
    return HttpResponse(request.scheme, content_type="text/plain")


urlpatterns = [
    path("", views.index, name="index"),
    path("healthz/", views.healthz, name="healthz"),
    path("scheme/", scheme, name="scheme"),
]
if settings.SENTRY_DSN:
    urlpatterns.append(path("sentry-debug/", sentry_debug, name="sentry-debug"))
