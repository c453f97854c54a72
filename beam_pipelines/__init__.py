"""Apache Beam jobs of tfrec-kuai."""

COUNTER_NAMESPACE = "build_examples"
"""The namespace of the job's Beam counters (``rows_in``, ``dead_letter_<reason>``, ...)."""


class InputError(Exception):
    """An input the job cannot use (a glob matching nothing, a bad header, a truncated gzip file,
    a flag value out of range): the command prints it as one line and exits non-zero."""
