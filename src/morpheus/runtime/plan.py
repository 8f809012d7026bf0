"""Moved to `morpheus.optimizer.plan`; kept so that older imports keep working."""

from ..optimizer.plan import MapSnapshot, PlanOptions, SiteDecision, plan_sites

__all__ = ["MapSnapshot", "PlanOptions", "SiteDecision", "plan_sites"]
