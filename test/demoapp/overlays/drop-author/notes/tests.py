from datetime import timedelta

from django.test import TestCase, override_settings
from django.utils import timezone

from demosite.version import VERSION

from .models import Note

# The manifest only exists after collectstatic; tests use the plain storage.
PLAIN_STATIC = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}


@override_settings(
    STORAGES=PLAIN_STATIC, ALLOWED_HOSTS=["testserver"], SECURE_SSL_REDIRECT=False
)
class PagesTests(TestCase):
    def test_index_lists_seeded_note_and_version(self):
        response = self.client.get("/")
        self.assertEqual(response.status_code, 200)
        self.assertContains(response, "hello from the database")
        self.assertContains(response, VERSION)
        self.assertContains(response, "/static/notes/site.css")

    def test_index_shows_new_notes(self):
        Note.objects.create(text="second note")
        self.assertContains(self.client.get("/"), "second note")

    @override_settings(CACHE_BACKEND_NAME=None)
    def test_cache_none(self):
        self.assertContains(self.client.get("/"), "cache: none")

    @override_settings(CACHE_BACKEND_NAME="locmem")
    def test_cache_roundtrip(self):
        self.assertContains(self.client.get("/"), "cache: ok (locmem)")

    def test_healthz(self):
        response = self.client.get("/healthz/")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.content, b"ok\n")
        self.assertIn("no-cache", response["Cache-Control"])

    @override_settings(SECURE_SSL_REDIRECT=True)
    def test_healthz_is_exempt_from_ssl_redirect(self):
        self.assertEqual(self.client.get("/healthz/").status_code, 200)
        self.assertEqual(self.client.get("/").status_code, 301)

    def test_authors_are_no_longer_shown(self):
        Note.objects.create(text="by nobody in particular")
        self.assertNotContains(self.client.get("/"), "by anonymous")
        self.assertNotIn("author", [field.name for field in Note._meta.fields])

    def test_pinned_notes_come_first(self):
        Note.objects.create(text="pinned note", pinned=True)
        body = self.client.get("/").content.decode()
        self.assertLess(
            body.index("pinned note"), body.index("hello from the database")
        )

    def test_age_is_humanized(self):
        Note.objects.update(created=timezone.now() - timedelta(hours=2))
        self.assertContains(self.client.get("/"), "2 hours ago")
