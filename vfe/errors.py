"""The one exception type that the command line turns into a one-line message."""


class VfeError(Exception):
    """A problem the user can fix (bad flag, missing file, no network): shown in one line."""
