"""Forgetting and knowledge gain: the stages baseline and probe, and what they share (task types, engine)."""
