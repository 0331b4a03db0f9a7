from django.db import migrations


class Migration(migrations.Migration):
    # First of two steps to remove Note.author while the previous release still
    # reads it: the field leaves the model, the column stays. Rows that this
    # version inserts without naming it get the database default that 0002 gave
    # the column, so nothing changes in the database. The next version (0005)
    # drops the column, once nothing reads it.

    dependencies = [
        ("notes", "0003_note_pinned"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RemoveField(model_name="note", name="author"),
            ],
        ),
    ]
