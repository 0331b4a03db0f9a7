from django.db import migrations, models


class Migration(migrations.Migration):
    # Backward compatible: a database-level default, like 0002.

    dependencies = [
        ("notes", "0002_note_author"),
    ]

    operations = [
        migrations.AddField(
            model_name="note",
            name="pinned",
            field=models.BooleanField(db_default=False),
        ),
    ]
