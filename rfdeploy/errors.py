"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class RFDeployError(Exception):
    """A user-facing error: bad input, a mismatch between files, a missing optional dependency.

    The message is a single line that names the file or layer at fault.
    """
