"""The one exception the commands turn into a one-line message.

A `UserError` says what is wrong with the user's input, settings or files, and how to fix it. It is a
`ValueError` (and `MissingFile` also a `FileNotFoundError`), so API users keep catching what they caught before.
Anything else that escapes a command is a bug (a shape error, out of memory in the network) and keeps its
traceback.
"""


class UserError(ValueError):
    """Bad input, settings or files: the message names the file or key and the problem."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named (or that must be put somewhere) does not exist."""


class OutputExists(UserError, FileExistsError):
    """An output (a training run, a video) is already there and this run may not replace it."""
