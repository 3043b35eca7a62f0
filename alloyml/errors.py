"""One exception hierarchy for the whole package.

Every error alloyml raises on purpose derives from `AlloyError`, so callers can catch ours apart from
bugs. Messages name the offending input and what was expected.
"""


class AlloyError(Exception):
    """Base class of every error alloyml raises on purpose."""


class InvalidInputError(AlloyError, ValueError):
    """An argument, array, file or config is malformed; raised before any work starts."""


class NotFoundError(AlloyError, LookupError):
    """An id, name or key does not exist in the store (or artifact store)."""


class ConfigError(InvalidInputError):
    """A settings value or a YAML/JSON configuration is invalid."""


class StoreError(AlloyError):
    """The metadata store could not complete an operation; the transaction was rolled back."""


class SchemaOutdatedError(StoreError):
    """The database schema is missing or older than this alloyml; run `alloyml db upgrade`."""


class WorkflowError(AlloyError):
    """A workflow step failed after its retries, or a workflow was cancelled."""


class TrialsFailedError(AlloyError):
    """No trial of a search produced a result; the message carries the trials' own errors."""
