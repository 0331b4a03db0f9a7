from django.db import models


class Note(models.Model):
    text = models.CharField(max_length=200)
    created = models.DateTimeField(auto_now_add=True)
    # A database-level default keeps the previous release working while both
    # run against the migrated schema: its INSERTs do not name this column.
    author = models.CharField(max_length=100, db_default="anonymous")

    class Meta:
        ordering = ["created", "id"]

    def __str__(self):
        return self.text
