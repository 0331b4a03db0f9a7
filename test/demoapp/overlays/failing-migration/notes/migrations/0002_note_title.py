from django.db import migrations, models


def fill_titles(apps, schema_editor):
    Note = apps.get_model("notes", "Note")
    db = schema_editor.connection.alias
    # Rewrite every row, then fail: the whole migration must be rolled back.
    Note.objects.using(db).update(
        title="broken", text="rewritten by a failed migration"
    )
    raise RuntimeError("0002_note_title: cannot derive titles from existing notes")


class Migration(migrations.Migration):
    dependencies = [
        ("notes", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="note",
            name="title",
            field=models.CharField(db_default="", max_length=200),
        ),
        migrations.RunPython(fill_titles, migrations.RunPython.noop),
    ]
