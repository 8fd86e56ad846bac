"""The one error the exporter raises for bad input; the CLI prints its message as one line and exits non-zero."""


class ExportError(Exception):
    """A message naming the input at fault, the value, and what is accepted."""
