"""The ``steep`` console command: what a user runs beside the stages (audit, review, cache), one subcommand each."""
