from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("notes", "0003_note_pinned"),
    ]

    operations = [
        migrations.AddField(
            model_name="note",
            name="mood",
            field=models.CharField(blank=True, max_length=20, null=True),
        ),
    ]
