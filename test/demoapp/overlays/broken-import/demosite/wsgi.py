"""WSGI entry point: ``demosite.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

# demosite/middleware.py was never committed: importing this module fails.
from demosite.middleware import RequestIdMiddleware

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demosite.settings")

application = RequestIdMiddleware(get_wsgi_application())
