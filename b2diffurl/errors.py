"""The errors a user can act on, and the exit code each gets: a leaf module that imports nothing.

A command reports these as one line on stderr (no traceback) and exits with exit_code(error);
any other exception is a bug and keeps its traceback. The README's error table lists the codes.
"""


class UserError(Exception):
    """A problem the user can fix (bad config, missing model or file): one line, exit code 2."""


class SampleFileError(ValueError):
    """A sample file that is not what this version writes or what the config expects."""


class DamagedFileError(UserError):
    """A file of the run that cannot be read back (cut short by a crash, a disk error)."""


class NonFiniteWeightsError(RuntimeError):
    """Training diverged: the LoRA holds NaN or inf, and is not saved."""


class UntrainedStageError(RuntimeError):
    """Stage after stage, every optimiser step was skipped (non-finite loss, fp16 overflow)."""


class DiskSpaceError(OSError):
    """A write failed (ENOSPC or another OSError), or a stage would not fit in the free space."""


class RewardError(RuntimeError):
    """The reward function raised, or returned the wrong number of scores or non-numbers."""


class RunLockedError(RuntimeError):
    """Another process holds the run folder's lock."""


class UnsharedFolderError(RuntimeError):
    """The processes of one launch (the nodes of a cluster job) do not see the same run folder."""


class Terminated(BaseException):
    """SIGTERM arrived (pre-emption, scancel): unwind, removing partial files, then exit 143."""


EXIT_CODES = {UserError: 2, SampleFileError: 2, NonFiniteWeightsError: 1, UntrainedStageError: 1,
              DiskSpaceError: 3, RewardError: 4, RunLockedError: 5,
              UnsharedFolderError: 6}
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process that SIGTERM ended


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (its type's name if it has none): what a
    one-line error quotes of a library's own words."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def exit_code(error: BaseException) -> int:
    """The exit code of a user-actionable error (its class or nearest listed base), else 1."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1
