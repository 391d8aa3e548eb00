"""One module per ``llmquant`` subcommand (see :mod:`llmquant.cli`)."""
