"""The errors a user can act on, and the exit code each gets: a leaf module that imports nothing.

A command reports these as one line on stderr (no traceback) and exits with EXIT_CODES[type];
any other exception is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix (bad config, missing model or file): one line, exit code 2."""


class SampleFileError(ValueError):
    """A sample file that is not what this version writes or what the config expects."""


class NonFiniteWeightsError(RuntimeError):
    """Training diverged: the LoRA holds NaN or inf, and is not saved."""


EXIT_CODES = {UserError: 2, SampleFileError: 2, NonFiniteWeightsError: 1}
