"""Shared by every stage: errors and files (io), the params schema (params/), records, the command line
(cli), import closures (code)."""
