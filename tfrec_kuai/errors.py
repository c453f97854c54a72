"""The error a user's input causes, as opposed to a fault of the program.

``tfrec-kuai`` (``tfrec_kuai.cli``) turns an ``InputError`` into one line on stderr,
``tfrec-kuai <command>: error: <message>``, and exit status 2, the same as argparse does for a bad
flag; any other exception is a bug and keeps its traceback. The message names the offending path
or value and, where there is one, what to do instead.

It subclasses ``ValueError`` so that library callers that catch ``ValueError`` keep working.
"""


class InputError(ValueError):
    """A folder, file or value given by the user cannot be used as it is."""
