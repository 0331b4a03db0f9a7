import uuid

import humanize
from django.conf import settings
from django.core.cache import cache
from django.http import HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.cache import never_cache

from demosite.version import VERSION

from .models import Note


def cache_status():
    """Write a value to the configured cache and read it back."""
    if not settings.CACHE_BACKEND_NAME:
        return "none"
    key = f"roundtrip:{uuid.uuid4().hex}"
    value = uuid.uuid4().hex
    try:
        cache.set(key, value, timeout=30)
        ok = cache.get(key) == value
        cache.delete(key)
    except Exception as exc:  # the page still renders when the cache is down
        return f"error ({type(exc).__name__})"
    return f"ok ({settings.CACHE_BACKEND_NAME})" if ok else "mismatch"


@never_cache
def index(request):
    now = timezone.now()
    notes = [
        {
            "text": note.text,
            "pinned": note.pinned,
            "age": humanize.naturaltime(now - note.created),
        }
        for note in Note.objects.order_by("-pinned", "created", "id")
    ]
    context = {
        "version": VERSION,
        "notes": notes,
        "count": humanize.apnumber(len(notes)),
        "cache": cache_status(),
    }
    return render(request, "notes/index.html", context)


@never_cache
def healthz(request):
    Note.objects.count()
    return HttpResponse("ok\n", content_type="text/plain")
