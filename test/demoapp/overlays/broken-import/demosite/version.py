VERSION = "broken-import"
