"""Everything with side effects: command line, files, cluster jobs. ``python -m jobs --help``."""
