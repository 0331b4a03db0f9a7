VERSION = "django6"
