"""Helpers shared by the test tiers (unit, dist, gpu): toy models, run directories, process control."""
