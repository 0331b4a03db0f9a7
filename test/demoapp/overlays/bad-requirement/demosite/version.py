VERSION = "bad-requirement"
