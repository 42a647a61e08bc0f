"""Sampling: sigma schedules and solvers over a velocity callable (flow matching, v = noise - x0)."""
