"""The one exception type for mistakes a user can make (bad paths, names, arguments).

The CLI turns a :class:`UserError` into a single line on stderr and exit status 2,
never a traceback.
"""


class UserError(Exception):
    """An error caused by user input; its message is shown as one line."""
