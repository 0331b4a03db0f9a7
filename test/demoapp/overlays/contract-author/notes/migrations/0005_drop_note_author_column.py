from django.db import migrations
from django_safemigrate import Safe


class Migration(migrations.Migration):
    # Second step: drop the column that 0004 took out of the model, once this
    # version serves: no release that reads the column is left serving, even when
    # this version is released straight over v1.2.0.
    safe = Safe.after_deploy()

    dependencies = [
        ("notes", "0004_note_author_leaves_the_model"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.RunSQL(
                    "ALTER TABLE notes_note DROP COLUMN author",
                    reverse_sql=(
                        "ALTER TABLE notes_note ADD COLUMN author varchar(100) "
                        "DEFAULT 'anonymous' NOT NULL"
                    ),
                ),
            ],
        ),
    ]
