"""Curation: the stages pull, moderate, dedup and synthesize, and what they share."""
