VERSION = "drop-author"
