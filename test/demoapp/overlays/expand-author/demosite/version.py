VERSION = "expand-author"
