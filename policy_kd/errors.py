"""The one exception type the command line turns into a one-line error."""


class PolicyKDError(Exception):
    """A problem with the user's input, stated in one line that names the problem and the fix.

    The CLI prints it as ``policy-kd: error: <message>`` and exits with status 2, without a
    traceback. Library callers can catch it like any exception.
    """
