from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    # Database-level defaults keep the previous releases working while they
    # run against the migrated schema: their INSERTs do not name these columns.
    author = models.CharField(max_length=100, db_default="anonymous")
    pinned = models.BooleanField(db_default=False)
    # Nullable: rows that the previous release inserts simply have none.
    mood = models.CharField(max_length=20, null=True, blank=True)

    class Meta:
        ordering = ["created", "id"]

    def __str__(self):
        return self.text
