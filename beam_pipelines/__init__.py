"""Apache Beam jobs of tfrec-kuai."""


class InputError(Exception):
    """An input the job cannot use (a glob matching nothing, a bad header, a truncated gzip file,
    a flag value out of range): the command prints it as one line and exits non-zero."""
