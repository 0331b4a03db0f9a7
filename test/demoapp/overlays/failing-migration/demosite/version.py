VERSION = "failing-migration"
