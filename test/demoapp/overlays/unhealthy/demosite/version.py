VERSION = "unhealthy"
