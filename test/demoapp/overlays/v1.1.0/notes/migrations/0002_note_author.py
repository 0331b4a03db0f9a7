from django.db import migrations, models


class Migration(migrations.Migration):
    # Backward compatible: the column gets a database-level default, so the
    # previous release (which does not know the column) can still insert rows.

    dependencies = [
        ("notes", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="note",
            name="author",
            field=models.CharField(db_default="anonymous", max_length=100),
        ),
    ]
