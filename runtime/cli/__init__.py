"""The command line: one module per ``streamdag`` subcommand."""
