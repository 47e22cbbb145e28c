"""Exceptions shared across moire-al.

Every error a user can cause by bad input derives from :class:`MoireALError` so the
CLI can print one clear line instead of a traceback.
"""


class MoireALError(Exception):
    """Base class: an error with a message meant for the user."""


class StructureError(MoireALError, ValueError):
    """A structure is unusable (no cell, overlapping atoms, unknown species, NaN)."""


class LabelError(MoireALError):
    """A label could not be produced or is invalid (e.g. NaN forces)."""


class ModelError(MoireALError, ValueError):
    """A model cannot be fitted or applied to the given data."""


class SettingsError(MoireALError, ValueError):
    """A parameter or setting is unknown or out of range (loop parameters, labeller
    settings, model hyperparameters, pool recipes)."""


class NotFoundError(MoireALError, KeyError):
    """A loop, model or structure id that is not in the job database."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatabaseError(MoireALError):
    """The job database cannot be started, reached or used."""
