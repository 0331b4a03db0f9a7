from django.core.management.base import BaseCommand

from notes.models import Note


class Command(BaseCommand):
    help = "Add a note."

    def add_arguments(self, parser):
        parser.add_argument("text")
        parser.add_argument(
            "--author", help="who wrote it (database default when omitted)"
        )

    def handle(self, *args, **options):
        fields = {"text": options["text"]}
        if options["author"]:
            fields["author"] = options["author"]
        note = Note.objects.create(**fields)
        self.stdout.write(f"{note.pk}")
