"""Model inference nodes at run time: their actor, interactive requests, metrics, test models."""

__all__: list[str] = []
