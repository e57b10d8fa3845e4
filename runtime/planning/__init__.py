"""Planning: the pure planner, its renderings, wiring and resource budgets."""
