"""Pruning: unit selection (pure), schedules, recipes and the structured pruning driver."""
