from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("notes", "0003_note_pinned"),
    ]

    operations = [
        migrations.RemoveField(
            model_name="note",
            name="author",
        ),
    ]
