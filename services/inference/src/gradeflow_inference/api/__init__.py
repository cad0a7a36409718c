"""The HTTP layer: routers (``routes``), their dependencies and the response encoder."""
