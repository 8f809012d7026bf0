"""Moved to `morpheus.optimizer.heat`; kept so that older imports keep working."""

from ..optimizer.heat import HeatReader, SiteHeat

__all__ = ["HeatReader", "SiteHeat"]
