import os

from django.http import HttpResponse


class TenantMiddleware:
    """Reports the site unhealthy while its tenant is not configured (it never is):
    pages still render, the health check fails."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/healthz/" and "DEMOSITE_TENANT" not in os.environ:
            return HttpResponse(
                "tenant not configured\n", status=503, content_type="text/plain"
            )
        return self.get_response(request)
