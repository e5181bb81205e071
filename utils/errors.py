"""The one exception type for problems a user can fix (bad file, bad option, missing checkpoint).

main.py turns it into a single line on stderr and a non-zero exit; anything else is a bug and
keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line naming the file, key or option."""
