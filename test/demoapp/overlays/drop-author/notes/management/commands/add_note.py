from django.core.management.base import BaseCommand

from notes.models import Note


class Command(BaseCommand):
    help = "Add a note."

    def add_arguments(self, parser):
        parser.add_argument("text")

    def handle(self, *args, **options):
        note = Note.objects.create(text=options["text"])
        self.stdout.write(f"{note.pk}")
