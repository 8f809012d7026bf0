"""Abstract interpretation of registers and stack slots.

Each register holds an abstract `Value`: a scalar (constant or unknown, with where it came
from), or a pointer to the stack, the context, the packet, a map, or a map value (with the
lookup site that produced it). Stack slots remember what was stored in them, so keys built
on the stack and spilled pointers are followed. The fixed point is computed per function
over its CFG with a worklist; the result is the abstract state before every instruction.

It is precise enough for what specialization needs: which map each helper call touches,
where its key is and which bytes of it are constants, and every instruction that reads or
writes through the value pointer a lookup returned. Anything it cannot follow becomes an
unknown scalar, which only ever makes later decisions more conservative.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from ..ir import Instruction, Program
from ..ir.helpers import HELPER_IDS
from ..ir.instruction import s32
from ..ir.opcodes import (
    C_ALU,
    C_ALU64,
    C_JMP,
    C_LD,
    C_LDX,
    C_ST,
    C_STX,
    J_JEQ,
    J_JNE,
    M_MEMSX,
    OP_ADD,
    OP_END,
    OP_MOV,
    OP_NEG,
    OP_SUB,
    PSEUDO_MAP_FD,
    PSEUDO_MAP_VALUE,
    PSEUDO_NONE,
    SRC_X,
    Mode,
)
from ..uapi import MapType, ProgType
from . import alu, pktbytes
from .cfg import CFG, build_cfg


class Kind(IntEnum):
    UNINIT = 0
    SCALAR = 1
    STACK = 2  # pointer into this function's stack frame; off relative to r10
    CTX = 3
    PKT = 4  # packet data pointer; off from ctx->data when known
    PKT_END = 5
    MAP = 6  # a map (ld_imm64 pseudo map fd); ref = map name
    VALUE = 7  # pointer into a map value; ref = (map name, site index)
    VALUE_OR_NULL = 8  # what a lookup returns before the NULL check
    DIRECT = 9  # ld_imm64 pseudo map value: ref = map name, off = offset in the value
    MAPS = 10  # a map that is one of several (a join): ref = frozenset of map designators
    VALUES = 11  # into the value of one of several lookups: ref = frozenset of VALUE refs


# The kinds under plain module names (see the opcode aliases in ir.opcodes for why).
(K_UNINIT, K_SCALAR, K_STACK, K_CTX, K_PKT, K_PKT_END, K_MAP, K_VALUE, K_VALUE_OR_NULL,
 K_DIRECT, K_MAPS, K_VALUES) = Kind


class Value(NamedTuple):
    """An abstract register or stack-slot value.

    For scalars `const` is the value (unsigned 64-bit) or None; for pointers it is the
    offset, or None when unknown. `origin` says where an unknown scalar was loaded from:
    ("pkt", off, size), ("ctx", off, size), ("value", map, off, size) or ("stack", off, size);
    ("pkt", None, 0, bytes) for packet bytes assembled by arithmetic, where `bytes` says which
    packet byte each byte of the scalar holds (`pktbytes`), and ("pkt", None, 0) where even
    that is lost.
    """

    kind: Kind
    const: int | None = None
    ref: object = None
    origin: tuple[object, ...] | None = None

    @property
    def is_pointer(self) -> bool:
        return self.kind not in (K_SCALAR, K_UNINIT)

    def shifted(self, delta: int | None) -> Value:
        if self.const is None or delta is None:
            return Value(self.kind, None, self.ref)
        return Value(self.kind, self.const + delta, self.ref)


UNINIT = Value(K_UNINIT)
UNKNOWN = Value(K_SCALAR)


def const(value: int) -> Value:
    return Value(K_SCALAR, alu.u64(value))


# Stack memory: offset (negative, from r10) → (size, value stored there).
Stack = dict[int, tuple[int, Value]]


class State:
    """Registers and stack slots. The stack dict is shared between copies until one of them
    writes it (copy on write): most instructions do not touch the stack, and the analysis
    keeps a state for every instruction."""

    __slots__ = ("_shared", "regs", "stack")

    def __init__(self, regs: list[Value], stack: Stack, _shared: bool = False) -> None:
        self.regs = regs
        self.stack = stack
        self._shared = _shared

    def copy(self) -> State:
        self._shared = True
        return State(list(self.regs), self.stack, True)

    def own_stack(self) -> Stack:
        """The stack, made private to this state before it is changed."""
        if self._shared:
            self.stack = dict(self.stack)
            self._shared = False
        return self.stack

    def key(self) -> tuple[object, ...]:
        return (tuple(self.regs), tuple(sorted(self.stack.items())))


def join_values(a: Value, b: Value, nested: frozenset[str] = frozenset()) -> Value:
    """The least abstract value covering both. `nested` names the maps of maps: a lookup
    result of one of them, once not NULL, is an inner map, so joined with another map it
    becomes a set of maps (Katran's "this CPU's LRU, or the fallback LRU")."""
    if a == b:
        return a
    left, right = map_members(a, nested), map_members(b, nested)
    if left is not None and right is not None:
        return Value(K_MAPS, None, left | right)
    if a.kind in (K_VALUE, K_VALUES) and b.kind in (K_VALUE, K_VALUES) and a.ref != b.ref:
        # Two lookups' values meeting (clang merges the stores that follow them): a write
        # through the result is a write to each.
        return Value(K_VALUES, a.const if a.const == b.const else None,
                     value_refs(a) | value_refs(b))
    if a.kind == b.kind:
        if a.kind == K_SCALAR:
            return Value(K_SCALAR, None, None, _join_origins(a.origin, b.origin))
        if a.ref == b.ref:
            return Value(a.kind, None, a.ref)
    kinds = {a.kind, b.kind}
    if kinds == {K_VALUE, K_VALUE_OR_NULL} and a.ref == b.ref:
        return Value(K_VALUE_OR_NULL, a.const if a.const == b.const else None, a.ref)
    if K_VALUE_OR_NULL in kinds and (a.kind == K_SCALAR or b.kind == K_SCALAR):
        nullish = a if a.kind == K_SCALAR else b
        other = b if nullish is a else a
        if nullish.const == 0:
            return other
    return UNKNOWN


def _join_origins(a: tuple[object, ...] | None, b: tuple[object, ...] | None
                  ) -> tuple[object, ...] | None:
    if a == b:
        return a
    left, right = pktbytes.of_origin(a), pktbytes.of_origin(b)
    if left is not None and right is not None:
        joined = pktbytes.as_origin(pktbytes.join(left, right))
        if joined is not None:
            return joined
    if a and b and a[0] == b[0] == "pkt" and a[1] is None and b[1] is None:
        return ("pkt", None, 0)  # both assembled from packet bytes, no longer the same ones
    return None


def join_states(a: State, b: State, nested: frozenset[str] = frozenset()) -> State:
    regs = [join_values(x, y, nested) for x, y in zip(a.regs, b.regs, strict=True)]
    stack: Stack = {}
    for off, (size, value) in a.stack.items():
        other = b.stack.get(off)
        if other is not None and other[0] == size:
            stack[off] = (size, join_values(value, other[1], nested))
    return State(regs, stack)


def value_refs(value: Value) -> frozenset[tuple[str, int]]:
    """The (map, lookup site) pairs a value pointer may point into."""
    if value.kind == K_VALUES:
        return value.ref  # type: ignore[return-value]
    if value.kind in (K_VALUE, K_VALUE_OR_NULL) and isinstance(value.ref, tuple):
        return frozenset({value.ref})  # type: ignore[arg-type]
    return frozenset()


def map_members(value: Value, nested: frozenset[str] = frozenset()) -> frozenset[str] | None:
    """The maps a map-pointer value may designate (names, `outer[inner]` for an inner map
    of a map of maps in `nested`); None when the value is not known to be a map."""
    if value.kind == K_MAP:
        return frozenset({str(value.ref)})
    if value.kind == K_MAPS:
        return value.ref  # type: ignore[return-value]
    if value.kind == K_VALUE and isinstance(value.ref, tuple) and value.ref[0] in nested:
        return frozenset({f"{value.ref[0]}[inner]"})
    return None


# Context layouts: offset → what a load of that field yields.
_XDP_CTX = {0: K_PKT, 4: K_PKT_END}
_SKB_CTX = {76: K_PKT, 80: K_PKT_END}

LOOKUP = HELPER_IDS["map_lookup_elem"]
UPDATE = HELPER_IDS["map_update_elem"]
DELETE = HELPER_IDS["map_delete_elem"]
LOOKUP_AND_DELETE = -1  # not a helper (a syscall command); kept for symmetry
MAP_HELPERS_WRITE = {UPDATE, DELETE, HELPER_IDS["map_push_elem"],
                     HELPER_IDS["map_pop_elem"]}
# Helpers that take a map in r1 without changing its contents.
MAP_HELPERS_READ = {LOOKUP, HELPER_IDS["map_peek_elem"], HELPER_IDS["redirect_map"],
                    HELPER_IDS["perf_event_output"], HELPER_IDS["ringbuf_output"],
                    HELPER_IDS["ringbuf_reserve"], HELPER_IDS["for_each_map_elem"]}
TAIL_CALL = HELPER_IDS["tail_call"]
SMP_PROCESSOR_ID = HELPER_IDS["get_smp_processor_id"]
# The origin of the CPU id itself (arithmetic on it gives ("cpu", None, 0), see
# `_derived_origin`): a key that is exactly the CPU id selects the CPU's own slot.
CPU_ID_ORIGIN = ("cpu", 0, 4)
# Helpers that only read memory they are given (pointer arguments are inputs).
READ_ONLY_MEMORY_HELPERS = {
    LOOKUP, UPDATE, DELETE, HELPER_IDS["csum_diff"], HELPER_IDS["xdp_store_bytes"],
    HELPER_IDS["ringbuf_output"], HELPER_IDS["perf_event_output"], HELPER_IDS["trace_printk"],
    HELPER_IDS["skb_store_bytes"],
}


@dataclass(frozen=True)
class Analysis:
    """Abstract state before each instruction of the program (None where unreachable)."""

    program: Program
    states: list[State | None]
    cfgs: dict[str, CFG]

    def state(self, index: int) -> State | None:
        return self.states[index]


def analyze_values(program: Program, prog_type: int = ProgType.XDP,
                   map_types: Mapping[str, int] | None = None) -> Analysis:
    """Run the abstract interpretation over every function of the program."""
    states: list[State | None] = [None] * len(program.insns)
    cfgs: dict[str, CFG] = {}
    ctx_layout = _XDP_CTX if prog_type == ProgType.XDP else _SKB_CTX
    nested = frozenset(name for name, kind in (map_types or {}).items()
                       if kind in _MAP_OF_MAPS_TYPES)
    for n, function in enumerate(program.functions()):
        cfg = build_cfg(program, function)
        cfgs[function.name] = cfg
        entry = State([UNINIT] * 11, {})
        entry.regs[10] = Value(K_STACK, 0)
        # The entry function gets the context; subprograms get unknown arguments.
        entry.regs[1] = Value(K_CTX, 0) if n == 0 else UNKNOWN
        for r in range(2, 6):
            if n:
                entry.regs[r] = UNKNOWN
        _fixpoint(program, cfg, entry, states, ctx_layout, nested)
    return Analysis(program, states, cfgs)


_MAP_OF_MAPS_TYPES = frozenset({MapType.ARRAY_OF_MAPS, MapType.HASH_OF_MAPS})


def _fixpoint(program: Program, cfg: CFG, entry: State, states: list[State | None],
              ctx_layout: Mapping[int, Kind], nested: frozenset[str]) -> None:
    block_in: dict[int, State] = {cfg.entry: entry}
    order = {b: i for i, b in enumerate(cfg.reverse_postorder())}
    # Blocks in reverse postorder: a heap of (rank, block), with a set against duplicates.
    heap = [(order.get(cfg.entry, 0), cfg.entry)]
    queued = {cfg.entry}
    visits: dict[int, int] = {}

    def push(block: int) -> None:
        if block not in queued:
            queued.add(block)
            heapq.heappush(heap, (order.get(block, 1 << 30), block))

    while heap:
        _, start = heapq.heappop(heap)
        queued.discard(start)
        visits[start] = visits.get(start, 0) + 1
        block = cfg.blocks[start]
        state = block_in[start].copy()
        out: dict[int, State] = {}
        for index in range(block.start, block.end):
            states[index] = state.copy()
            insn = program.insns[index]
            if index == block.last and insn.is_branch:
                taken, fallthrough = _branch(insn, state)
                target = program.labels[insn.reference]  # type: ignore[index]
                if taken is not None:
                    out[target] = taken
                if insn.is_conditional_jump and fallthrough is not None:
                    # A jump to the next instruction: both edges reach the same block.
                    prior = out.get(block.end)
                    out[block.end] = (fallthrough if prior is None
                                      else join_states(prior, fallthrough, nested))
                break
            _step(insn, state, index, ctx_layout)
            if insn.is_exit:
                break
        else:
            if block.succs:
                out[block.succs[0]] = state
        for succ, succ_state in out.items():
            if succ not in cfg.blocks:
                continue
            old = block_in.get(succ)
            if old is None:
                block_in[succ] = succ_state.copy()
                push(succ)
                continue
            joined = join_states(old, succ_state, nested)
            if visits.get(succ, 0) > 8:
                joined = _widen(joined)
            if joined.regs != old.regs or joined.stack != old.stack:
                block_in[succ] = joined
                push(succ)


def _widen(state: State) -> State:
    # Kinds and refs survive widening (only constants are dropped), and a set of maps only
    # grows, to at most every map: the fixed point still terminates.
    regs = [Value(v.kind, None, v.ref) if v.kind != K_UNINIT else v for v in state.regs]
    regs[10] = Value(K_STACK, 0)
    return State(regs, {o: (s, Value(v.kind, None, v.ref)) for o, (s, v) in state.stack.items()})


# --- transfer functions -------------------------------------------------------------------


def _operand(insn: Instruction, state: State) -> Value:
    if insn.opcode & SRC_X:
        return state.regs[insn.src]
    return const(insn.imm)


def _step(insn: Instruction, state: State, index: int, ctx_layout: Mapping[int, Kind]) -> None:
    cls = insn.opcode & 0x07
    regs = state.regs
    if cls in (C_ALU, C_ALU64):
        _step_alu(insn, state)
    elif insn.is_ld_imm64:
        regs[insn.dst] = _ld_imm64(insn)
    elif cls == C_LD:
        # Legacy packet loads (socket filters): r0 = packet data, r1-r5 clobbered.
        regs[0] = UNKNOWN
        for r in range(1, 6):
            regs[r] = UNINIT
    elif cls == C_LDX:
        regs[insn.dst] = _load(insn, state, ctx_layout)
    elif cls in (C_ST, C_STX):
        _store(insn, state)
        if insn.is_atomic:
            _atomic_result(insn, state)
    elif insn.is_call or insn.opcode == (C_JMP | 0x80 | SRC_X):
        _call(insn, state, index)  # callx too: an indirect call clobbers like any call


def _step_alu(insn: Instruction, state: State) -> None:
    regs = state.regs
    wide = (insn.opcode & 0x07) == C_ALU64
    op = insn.opcode & 0xF0
    dst = regs[insn.dst]
    if op == OP_END:
        if dst.kind == K_SCALAR and dst.const is not None:
            regs[insn.dst] = const(alu.endian(dst.const, insn.imm,
                                              to_be=bool(insn.opcode & SRC_X), bswap=wide))
        else:
            bytes_ = pktbytes.of_origin(dst.origin)
            origin = dst.origin
            if bytes_ is not None:
                origin = pktbytes.as_origin(pktbytes.endian(
                    bytes_, insn.imm, to_be=bool(insn.opcode & SRC_X), bswap=wide)) \
                    or ("pkt", None, 0)
            regs[insn.dst] = Value(K_SCALAR, None, None, origin)
        return
    src = _operand(insn, state)
    if op == OP_MOV:
        if wide and insn.off == 0:
            regs[insn.dst] = src
        elif src.kind == K_SCALAR and src.const is not None:
            regs[insn.dst] = const(alu.alu(op, 0, src.const, wide=wide, off=insn.off))
        else:
            origin = src.origin if src.kind == K_SCALAR else None
            bytes_ = pktbytes.of_origin(origin)
            if bytes_ is not None and (insn.off or not wide):
                # movsx: the high bytes are copies of a sign bit; mov32: zero-extended.
                composed = (None,) * pktbytes.WIDTH if insn.off else \
                    pktbytes.truncated(bytes_, 4)
                origin = pktbytes.as_origin(composed) or ("pkt", None, 0)
            regs[insn.dst] = Value(K_SCALAR, None, None, origin)
        return
    if op == OP_NEG:
        regs[insn.dst] = (const(alu.alu(op, dst.const, 0, wide=wide))
                          if dst.kind == K_SCALAR and dst.const is not None else UNKNOWN)
        return
    if src.is_pointer and dst.kind == K_SCALAR and wide and op == OP_ADD:
        # scalar + pointer is a pointer (clang sometimes puts the offset first)
        regs[insn.dst] = src.shifted(None if dst.const is None else alu.signed(dst.const, 64))
        return
    if dst.is_pointer and wide and op in (OP_ADD, OP_SUB):
        if src.kind == K_SCALAR:
            delta = None if src.const is None else alu.signed(src.const, 64)
            if delta is not None and op == OP_SUB:
                delta = -delta
            regs[insn.dst] = dst.shifted(delta)
        elif op == OP_SUB and src.kind == dst.kind:
            regs[insn.dst] = UNKNOWN  # pointer difference (e.g. data_end - data)
        else:
            regs[insn.dst] = UNKNOWN
        return
    if dst.kind == K_SCALAR and src.kind == K_SCALAR and dst.const is not None \
            and src.const is not None:
        try:
            regs[insn.dst] = const(alu.alu(op, dst.const, src.const, wide=wide, off=insn.off))
            return
        except ValueError:
            pass
    if dst.kind == K_SCALAR and src.kind == K_SCALAR:
        # Arithmetic on packet fields is still "from the packet"; where it moves whole bytes
        # (a MAC assembled from byte loads with shifts and ors) it says which ones.
        origin = _assembled_origin(op, dst, src, wide=wide) or _derived_origin(dst, src)
        regs[insn.dst] = Value(K_SCALAR, None, None, origin) if origin else UNKNOWN
        return
    regs[insn.dst] = UNKNOWN


def _bytes_of(value: Value) -> pktbytes.ByteMap | None:
    if value.const is not None:
        return pktbytes.of_constant(value.const)
    return pktbytes.of_origin(value.origin)


def _assembled_origin(op: int, dst: Value, src: Value, *, wide: bool
                      ) -> tuple[object, ...] | None:
    """The origin of `dst op src` when it is a known arrangement of packet bytes."""
    left, right = _bytes_of(dst), _bytes_of(src)
    if left is None or right is None:
        return None
    if dst.const is not None and src.const is not None:
        return None
    bytes_ = pktbytes.alu(op, left, right, src.const, wide=wide)
    return pktbytes.as_origin(bytes_)


def _derived_origin(a: Value, b: Value) -> tuple[object, ...] | None:
    kinds = {v.origin[0] for v in (a, b) if v.origin}
    if len(kinds) == 1:
        return (kinds.pop(), None, 0)
    return None


def _ld_imm64(insn: Instruction) -> Value:
    if insn.src == PSEUDO_MAP_FD:
        return Value(K_MAP, None, insn.reference)
    if insn.src == PSEUDO_MAP_VALUE:
        return Value(K_DIRECT, insn.imm, insn.reference)
    if insn.src == PSEUDO_NONE:
        return const(insn.imm)
    return UNKNOWN


def _load(insn: Instruction, state: State, ctx_layout: Mapping[int, Kind]) -> Value:
    base = state.regs[insn.src]
    size = insn.size_bytes
    off = None if base.const is None else base.const + insn.off
    if base.kind == K_CTX:
        kind = ctx_layout.get(off) if off is not None else None
        if kind is not None:
            return Value(kind, 0)
        return Value(K_SCALAR, None, None, ("ctx", off, size))
    if base.kind == K_STACK:
        if off is None:
            return UNKNOWN
        slot = state.stack.get(off)
        if slot is not None and slot[0] == size:
            value = slot[1]
            if value.kind == K_SCALAR and value.const is not None and size < 8:
                low = value.const & ((1 << (8 * size)) - 1)
                if insn.mode == M_MEMSX:
                    return const(alu.signed(low, 8 * size))
                return const(low)
            return value if (size == 8 or value.kind == K_SCALAR) else UNKNOWN
        return Value(K_SCALAR, None, None, ("stack", off, size))
    if base.kind == K_PKT:
        if insn.mode == M_MEMSX and off is not None:
            return Value(K_SCALAR, None, None, pktbytes.as_origin(
                pktbytes.of_load(off, size, sign_extended=True)))
        return Value(K_SCALAR, None, None, ("pkt", off, size))
    if base.kind == K_VALUE:
        return Value(K_SCALAR, None, None, ("value", base.ref, off, size))
    if base.kind == K_VALUES:
        return Value(K_SCALAR, None, None, ("value", None, off, size))
    if base.kind == K_DIRECT:
        return Value(K_SCALAR, None, None, ("direct", base.ref, off, size))
    return UNKNOWN


def _atomic_result(insn: Instruction, state: State) -> None:
    """Atomics that return the old value overwrite a register."""
    imm = insn.imm
    if imm == 0xF1:  # cmpxchg: r0 receives the old value
        state.regs[0] = UNKNOWN
    elif imm == 0x100:  # load-acquire writes dst
        state.regs[insn.dst] = UNKNOWN
    elif imm & 0x01 or imm == 0xE1:  # fetch forms and xchg write src
        state.regs[insn.src] = UNKNOWN


def _store(insn: Instruction, state: State) -> None:
    base = state.regs[insn.dst]
    if base.kind != K_STACK:
        return
    size = insn.size_bytes
    if base.const is None:
        state.own_stack().clear()  # a store at an unknown stack offset may hit anything
        return
    off = base.const + insn.off
    _invalidate(state.own_stack(), off, size)
    if insn.is_atomic:
        return
    if insn.opcode & 0x07 == C_ST:
        value = const(insn.imm & ((1 << (8 * size)) - 1)) if size < 8 else const(insn.imm)
    else:
        value = state.regs[insn.src]
        if size < 8:
            if value.kind == K_SCALAR and value.const is not None:
                value = const(value.const & ((1 << (8 * size)) - 1))
            elif value.kind != K_SCALAR:
                value = UNKNOWN
            elif pktbytes.of_origin(value.origin) is not None:
                # What a load of the slot gives back: the low bytes, zero-extended.
                bytes_ = pktbytes.truncated(pktbytes.of_origin(value.origin), size)  # type: ignore[arg-type]
                value = Value(K_SCALAR, None, None,
                              pktbytes.as_origin(bytes_) or ("pkt", None, 0))
    state.own_stack()[off] = (size, value)


def _invalidate(stack: Stack, off: int, size: int) -> None:
    """Forget the slots [off, off + size) overlaps. A constant slot keeps the bytes the
    store leaves alone: `struct key k = { .prefixlen = 32 }` is one 8-byte constant store,
    then the address overwrites its upper half, and the prefix length must stay known."""
    for other in [o for o, (s, _) in stack.items() if o < off + size and off < o + s]:
        width, value = stack.pop(other)
        if value.kind != K_SCALAR or value.const is None:
            continue
        if other < off:
            keep = off - other
            stack[other] = (keep, const(value.const & ((1 << (8 * keep)) - 1)))
        end = off + size
        if end < other + width:
            keep = other + width - end
            stack[end] = (keep, const((value.const >> (8 * (end - other)))
                                      & ((1 << (8 * keep)) - 1)))


def _call(insn: Instruction, state: State, index: int) -> None:
    regs = state.regs
    if insn.is_helper_call:
        helper = insn.imm
        if helper == LOOKUP:
            regs[0] = Value(K_VALUE_OR_NULL, 0, (map_name(regs[1]), index))
        elif helper == SMP_PROCESSOR_ID:
            regs[0] = Value(K_SCALAR, None, None, CPU_ID_ORIGIN)
        else:
            regs[0] = UNKNOWN
        _clobber_escaped_stack(insn, state)
    else:
        regs[0] = UNKNOWN
        _clobber_escaped_stack(insn, state)
    for r in range(1, 6):
        regs[r] = UNINIT


def map_name(value: Value) -> str:
    """The map a register designates: a map name, `outer[inner]` for a map taken out of a
    map of maps (a lookup result of the outer map), `a|b` for one of several maps, or "?"
    when unknown."""
    if value.kind == K_MAP:
        return str(value.ref)
    if value.kind == K_VALUE and isinstance(value.ref, tuple):
        return f"{value.ref[0]}[inner]"
    if value.kind == K_MAPS:
        return "|".join(sorted(value.ref))  # type: ignore[call-overload]
    return "?"


def map_set(value: Value) -> frozenset[str] | None:
    """The maps a register passed as a map argument may be (None: any map)."""
    if value.kind == K_VALUE and isinstance(value.ref, tuple):
        return frozenset({f"{value.ref[0]}[inner]"})  # as `map_name` reads it
    return map_members(value)


def _clobber_escaped_stack(insn: Instruction, state: State) -> None:
    """A helper or subprogram given a stack pointer may write through it."""
    if insn.is_helper_call and insn.imm in READ_ONLY_MEMORY_HELPERS:
        return
    for r in range(1, 6):
        arg = state.regs[r]
        if arg.kind == K_STACK:
            if arg.const is None:
                state.own_stack().clear()
                return
            # Unknown extent: forget everything at or above the pointer in this frame.
            doomed = [o for o in state.stack if o + state.stack[o][0] > arg.const]
            if doomed:
                stack = state.own_stack()
                for off in doomed:
                    del stack[off]


def _branch(insn: Instruction, state: State) -> tuple[State | None, State | None]:
    """States on the taken and the fall-through edge; None for an edge that cannot happen."""
    if insn.is_unconditional_jump:
        return state.copy(), None
    op = insn.opcode & 0xF0
    wide = (insn.opcode & 0x07) == C_JMP
    a = state.regs[insn.dst]
    b = _operand(insn, state)
    if a.kind == K_SCALAR and b.kind == K_SCALAR and a.const is not None \
            and b.const is not None:
        taken = alu.compare(op, a.const, b.const, wide=wide)
        return (state.copy(), None) if taken else (None, state.copy())
    taken_state, fall_state = state.copy(), state.copy()
    # NULL checks on lookup results: refine every copy of the pointer.
    if a.kind == K_VALUE_OR_NULL and b.kind == K_SCALAR and b.const == 0 and wide:
        if op == J_JEQ:
            _refine_null(taken_state, a, null=True)
            _refine_null(fall_state, a, null=False)
        elif op == J_JNE:
            _refine_null(taken_state, a, null=False)
            _refine_null(fall_state, a, null=True)
    elif b.kind == K_SCALAR and b.const is not None and a.kind == K_SCALAR and \
            op in (J_JEQ, J_JNE) and a.const is None:
        # Equality learns the constant on one edge: `if r1 == 5` gives r1 = 5 when taken.
        learned = const(b.const if wide else b.const & alu.M32)
        target = taken_state if op == J_JEQ else fall_state
        if wide:
            target.regs[insn.dst] = learned
    return taken_state, fall_state


def _refine_null(state: State, value: Value, *, null: bool) -> None:
    replacement = const(0) if null else Value(K_VALUE, value.const, value.ref)
    for r, v in enumerate(state.regs):
        if v.kind == K_VALUE_OR_NULL and v.ref == value.ref:
            state.regs[r] = replacement
    for off, (size, v) in list(state.stack.items()):
        if v.kind == K_VALUE_OR_NULL and v.ref == value.ref:
            state.own_stack()[off] = (size, replacement)


__all__ = ["UNINIT", "UNKNOWN", "Analysis", "Kind", "State", "Value", "analyze_values",
           "const", "join_states", "join_values", "map_members", "map_name", "map_set", "s32",
           "value_refs"]

_ = Mode  # re-exported for users of the module's constants
