"""The runtime: planner, node workers, channels, runners, controller, metrics."""

__all__: list[str] = []
