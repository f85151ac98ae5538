"""One exception type for every user-facing problem.

Its message is a single line naming the problem and the fix; the CLI prints it without a
traceback. It subclasses ValueError so library users can catch it with ordinary code.
"""


class MamlkitError(ValueError):
    """A problem with the user's input, data or run folder, with the fix in its message."""
