VERSION = "add-nullable"
