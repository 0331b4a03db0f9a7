"""ASGI entry point: ``demosite.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

# demosite/middleware.py was never committed: importing this module fails.
from demosite.middleware import RequestIdMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demosite.settings")

application = RequestIdMiddleware(get_asgi_application())
