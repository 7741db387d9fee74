"""Command-line entry points: thin wrappers (parse, load params, call the library, write outputs)."""
