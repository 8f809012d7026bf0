"""Pure analyses of programs: CFG, abstract interpretation, map access sites."""

from .cfg import CFG, Block, build_cfg
from .sites import KeyByte, MapFacts, ProgramFacts, Site, ValueUse, analyze
from .values import Analysis, Kind, State, Value, analyze_values

__all__ = ["CFG", "Analysis", "Block", "KeyByte", "Kind", "MapFacts", "ProgramFacts", "Site",
           "State", "Value", "ValueUse", "analyze", "analyze_values", "build_cfg"]
