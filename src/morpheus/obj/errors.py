"""Errors of the object reader."""

from __future__ import annotations


class ObjectError(ValueError):
    """The object file is malformed or inconsistent; the message names what and where."""


class UnsupportedFeature(ObjectError):
    """The object uses a feature this loader does not implement (yet).

    `feature` names it (e.g. "CO-RE relocations"), so that nothing is silently mis-loaded.
    """

    def __init__(self, feature: str, detail: str = "") -> None:
        self.feature = feature
        self.detail = detail
        message = f"unsupported feature: {feature}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)
