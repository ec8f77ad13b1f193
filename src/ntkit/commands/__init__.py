"""The implementations of the ``ntkit`` subcommands (argument parsing lives in ``ntkit.cli``)."""
