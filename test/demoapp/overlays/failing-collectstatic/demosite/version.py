VERSION = "failing-collectstatic"
