"""Dead-code elimination: the second half of the cleanup after table inlining.

Once `constprop` has turned branches on configuration constants into `goto`s or removed
them, this pass deletes what no execution can reach or observe:

- **unreachable code**: blocks that the function's CFG does not reach from its entry, and
  whole subprograms that no reachable code calls (or takes the address of);
- **dead register definitions**: ALU operations, moves, 64-bit immediate loads and memory
  loads whose destination is overwritten or the function exits before anything reads it.
  Liveness is "strong": an instruction that is itself dead does not keep its operands alive,
  so whole chains disappear in one round. r0 is live at every exit; a call reads its
  arguments (r1-r5, fewer for helpers of known arity: `HELPER_ARITY`); stores, atomics,
  calls, exits and jumps always stay;
- **dead stack stores**: stores into this function's stack frame whose bytes are
  overwritten, or never read, before the function exits. Reads are loads from the stack
  and calls (helpers, subprograms, kfuncs) that receive a pointer into the stack: all bytes
  at or above such a pointer count as read, because the callee's access size is not
  tracked. Stack pointers are followed through moves and constant offsets; when one
  escapes in any other way (stored to memory), no stack store of that function is removed;
- **jump simplification**: a `goto` or conditional jump to the instruction that follows
  anyway is removed, and a jump whose target is a `goto` is sent straight to the final
  target (jump threading).

The pass repeats these steps until nothing changes (bounded by `max_rounds`): threading
makes `goto`s unreachable, removing a jump makes the registers it compared dead, and so on.
Deletions go through `apply_edits`, which keeps labels and BTF function info right.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Final

from ..analysis.cfg import CFG, build_cfg
from ..ir import EMPTY_META, Instruction, Program
from ..ir.edit import rewrite
from ..ir.helpers import HELPER_IDS
from ..ir.opcodes import (
    C_ALU,
    C_ALU64,
    C_JMP,
    C_JMP32,
    C_LD,
    C_LDX,
    C_ST,
    C_STX,
    CALL_HELPER,
    J_CALL,
    J_EXIT,
    J_JA,
    LD_IMM64,
    M_ATOMIC,
    M_IND,
    OP_ADD,
    OP_END,
    OP_MOV,
    OP_NEG,
    OP_SUB,
    SRC_X,
    AtomicOp,
)
from .pipeline import PassContext, register

# Register sets are bit masks: bit n stands for rn.
R0_MASK: Final = 1


ARG_MASK: Final = 0b111110  # r1-r5: what a call may read
# Arguments of the helpers the data plane calls most (their kernel prototypes): the verifier
# ignores the registers past a helper's last argument, so a definition only they would read
# is dead. Helpers not listed read r1-r5.
HELPER_ARITY: Final = {
    HELPER_IDS[name]: n for name, n in (
        ("map_lookup_elem", 2), ("map_update_elem", 4), ("map_delete_elem", 2),
        ("ktime_get_ns", 0), ("ktime_get_boot_ns", 0), ("get_prandom_u32", 0),
        ("get_smp_processor_id", 0), ("redirect", 2), ("redirect_map", 3),
        ("xdp_adjust_head", 2), ("xdp_adjust_tail", 2), ("xdp_adjust_meta", 2),
        ("csum_diff", 5), ("tail_call", 3), ("fib_lookup", 4))
    if name in HELPER_IDS}


def call_args_mask(insn: Instruction) -> int:
    """Registers a call reads as arguments (r1-r5 unless the helper's arity is known)."""
    if insn.src == CALL_HELPER and not insn.opcode & SRC_X:
        arity = HELPER_ARITY.get(insn.imm)
        if arity is not None:
            return ((1 << (arity + 1)) - 1) & ~1
    return ARG_MASK
CALL_CLOBBER_MASK: Final = 0b111111  # r0-r5: what a call overwrites

# Stack byte sets are bit masks too: bit o + 512 stands for the byte at r10 + o (o < 0).
STACK_SIZE: Final = 512
ALL_STACK: Final = (1 << STACK_SIZE) - 1

_JA: Final = C_JMP | J_JA
_ALU_CLASSES = (C_ALU, C_ALU64)
_JMP_CLASSES = (C_JMP, C_JMP32)

# A stack pointer whose offset is not known (or a value that may or may not be one).
ANY_OFFSET: Final = "any"

# Helpers that may return a pointer into memory they were given (a dynptr over a stack
# buffer); every other helper returns a scalar or a pointer to kernel memory.
_ALIASING_HELPERS = frozenset({HELPER_IDS["dynptr_data"]})

# Instruction kinds for liveness.
_FIXED, _PURE, _STACK_STORE = 0, 1, 2


@register
@dataclass(frozen=True)
class DeadCodeElimination:
    """Remove unreachable code, dead register definitions and dead stack stores; simplify
    jumps. `dead_stores=False` keeps every store (e.g. while debugging a verifier error)."""

    name: ClassVar[str] = "dce"
    max_rounds: int = 16
    dead_stores: bool = True

    def run(self, program: Program, ctx: PassContext) -> Program:
        out, counts = eliminate_dead_code(program, max_rounds=self.max_rounds,
                                          dead_stores=self.dead_stores)
        stats = ctx.stats.setdefault(self.name, {})
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
        return out


def eliminate_dead_code(program: Program, *, max_rounds: int = 16,
                        dead_stores: bool = True) -> tuple[Program, dict[str, int]]:
    """The DCE pass as a function: the new program and how many instructions each rule
    removed (`unreachable`, `dead_defs`, `dead_stores`, `jumps`) or retargeted (`threaded`).
    """
    counts = {"unreachable": 0, "dead_defs": 0, "dead_stores": 0, "jumps": 0, "threaded": 0}
    for _ in range(max_rounds):
        program, edits, again = _round(program, dead_stores, counts)
        program = apply_edits(program, edits)
        if not again:
            break
    return program, counts


def remove_unreachable(program: Program) -> Program:
    """Only the first rule: delete code the CFGs do not reach and functions nobody calls.

    Passes that fold branches call this so that their output loads on its own (the
    verifier refuses unreachable instructions)."""
    reachable, _ = _reachability(program)
    edits = {i: () for i in range(len(program.insns)) if not reachable[i]}
    return apply_edits(program, edits)


def apply_edits(program: Program, edits: Mapping[int, Sequence[Instruction]]) -> Program:
    """`ir.edit.rewrite` plus what deleting whole instructions needs.

    - The BTF func_info of a function lives in the metadata of its first instruction; when
      that instruction goes, the next surviving instruction of the function inherits it
      (`encode` refuses a program where only some functions have func_info).
    - A deleted instruction's label moves to the next survivor, as `rewrite` does, unless
      no survivor refers to it any more: then it is dropped, so that deleting an unreachable
      block at the very end of the program does not leave a label pointing past the end.
    """
    if not edits:
        return program
    insns = program.insns
    gone = {i for i, new in edits.items() if not new}
    if not gone:
        return rewrite(program, edits)
    edits = dict(edits)
    for fn in program.functions():
        if fn.btf_id is None:
            continue
        holder = next(i for i in range(fn.start, fn.end)
                      if insns[i].meta.func_btf_id is not None)
        if holder not in gone:
            continue
        heir = next((i for i in range(holder + 1, fn.end) if i not in gone), None)
        if heir is None:
            continue  # the whole function goes
        new = list(edits.get(heir, (insns[heir],)))
        meta = new[0].meta if new[0].meta is not EMPTY_META else insns[heir].meta
        new[0] = new[0].with_meta_object(meta._replace(func_btf_id=fn.btf_id))
        edits[heir] = new
    referenced: set[str] = set()
    for i, insn in enumerate(insns):
        if i in edits:
            referenced.update(n.reference for n in edits[i] if n.reference is not None)
        elif insn.reference is not None:
            referenced.add(insn.reference)
    base = list(insns)
    for i in gone:
        label = insns[i].label
        # The entry instruction's label names the program's main function: keep it.
        if label is not None and label not in referenced and i != 0:
            base[i] = insns[i].without_label()
    return rewrite(Program(program.name, tuple(base)), edits)


# --- register and stack effects ----------------------------------------------------------


def register_effects(insn: Instruction) -> tuple[int, int]:
    """(registers read, registers written) by `insn`, as bit masks (bit n: rn).

    Calls read their arguments (r1-r5 unless the helper's arity is known) and overwrite
    r0-r5; exit reads r0; legacy packet loads read r6 (the context) and overwrite r0-r5.
    """
    op = insn.opcode
    cls = op & 0x07
    dst = 1 << insn.dst
    src = 1 << insn.src
    if cls in _ALU_CLASSES:
        aop = op & 0xF0
        if aop == OP_MOV:
            return (src if op & SRC_X else 0), dst
        if aop in (OP_NEG, OP_END):
            return dst, dst
        return dst | (src if op & SRC_X else 0), dst
    if cls == C_LDX:
        return src, dst
    if cls == C_LD:
        if op == LD_IMM64:
            return 0, dst
        return (1 << 6) | (src if op & 0xE0 == M_IND else 0), CALL_CLOBBER_MASK
    if cls == C_ST:
        return dst, 0
    if cls == C_STX:
        if op & 0xE0 != M_ATOMIC:
            return dst | src, 0
        imm = insn.imm
        if imm == AtomicOp.LOAD_ACQ:
            return src, dst
        if imm == AtomicOp.CMPXCHG:
            return dst | src | R0_MASK, R0_MASK
        if imm & AtomicOp.FETCH:
            return dst | src, src
        return dst | src, 0
    jop = op & 0xF0
    if jop == J_CALL:
        return call_args_mask(insn) | (dst if op & SRC_X else 0), CALL_CLOBBER_MASK
    if jop == J_EXIT:
        return R0_MASK, 0
    if jop == J_JA:
        return 0, 0
    return dst | (src if op & SRC_X else 0), 0


def is_pure(insn: Instruction) -> bool:
    """Whether deleting `insn` can only change the register it defines: ALU operations,
    moves, 64-bit immediate loads and memory loads (verified loads cannot fault)."""
    cls = insn.opcode & 0x07
    return cls in _ALU_CLASSES or insn.opcode == LD_IMM64 or insn.is_load


def _range_mask(offset: int, size: int) -> int | None:
    """Stack bytes [offset, offset + size) as a mask; None outside the frame."""
    if offset < -STACK_SIZE or offset + size > 0:
        return None
    return ((1 << size) - 1) << (offset + STACK_SIZE)


def _above_mask(offset: int | str) -> int:
    """Every stack byte at or above `offset`: what a callee given that pointer may read."""
    if not isinstance(offset, int) or offset < -STACK_SIZE:
        return ALL_STACK
    if offset >= 0:
        return 0
    shift = offset + STACK_SIZE
    return (ALL_STACK >> shift) << shift


Pointers = dict[int, int | str]  # register → offset from r10 or ANY_OFFSET (r10 implied)


def _join_pointers(a: Pointers, b: Pointers) -> Pointers:
    out: Pointers = {}
    for r in a.keys() | b.keys():
        x, y = a.get(r), b.get(r)
        out[r] = x if x == y else ANY_OFFSET  # type: ignore[assignment]
    return out


Facts = dict[int, tuple[int, int, int, int, int]]


def _instruction_facts(program: Program, cfg: CFG, order: Sequence[int],
                       effects: Sequence[tuple[int, int, bool]], dead_stores: bool) -> Facts:
    """Per reachable instruction: (kind, uses, defs, stack bytes read, stack bytes killed).

    Stack bytes come from a forward fixpoint that follows which registers point into the
    frame (through moves and constant offsets). Facts are recorded while it runs: the last
    visit of a block sees its final entry state, because any change queues it again.
    """
    insns = program.insns
    blocks = cfg.blocks
    facts: Facts = {}
    if not dead_stores:
        for start in order:
            block = blocks[start]
            for i in range(block.start, block.end):
                uses, defs, pure = effects[i]
                facts[i] = (_PURE if pure else _FIXED, uses, defs, 0, 0)
        return facts
    reachable = set(order)
    block_in: dict[int, Pointers] = {cfg.entry: {}}
    work = deque(order)
    queued = set(order)
    escaped = False
    while work:
        start = work.popleft()
        queued.discard(start)
        block = blocks[start]
        ptrs = dict(block_in[start])
        for i in range(block.start, block.end):
            insn = insns[i]
            uses, defs, pure = effects[i]
            op = insn.opcode
            cls = op & 0x07
            kind = _PURE if pure else _FIXED
            read = kill = 0
            if cls in _ALU_CLASSES:
                d = insn.dst
                aop = op & 0xF0
                source = (0 if insn.src == 10 else ptrs.get(insn.src)) if op & SRC_X \
                    else None
                current = ptrs.get(d)
                if aop == OP_MOV:
                    if source is None:
                        ptrs.pop(d, None)
                    elif cls == C_ALU64 and insn.off == 0:
                        ptrs[d] = source
                    else:  # a truncated copy is no usable pointer; be safe anyway
                        ptrs[d] = ANY_OFFSET
                elif current is not None or source is not None:
                    if (isinstance(current, int) and cls == C_ALU64 and source is None
                            and not op & SRC_X and aop in (OP_ADD, OP_SUB)):
                        ptrs[d] = current + insn.imm if aop == OP_ADD \
                            else current - insn.imm
                    else:  # arithmetic we do not follow, or scalar += r10
                        ptrs[d] = ANY_OFFSET
                facts[i] = (kind, uses, defs, 0, 0)
                continue
            if cls == C_LDX:
                base = 0 if insn.src == 10 else ptrs.get(insn.src)
                if base is not None:
                    read = _access_mask(base, insn.off, insn.size_bytes)
            elif cls in (C_ST, C_STX):
                atomic = op & 0xE0 == M_ATOMIC
                load_acquire = atomic and insn.imm == AtomicOp.LOAD_ACQ
                address = insn.src if load_acquire else insn.dst
                base = 0 if address == 10 else ptrs.get(address)
                if cls == C_STX and not load_acquire and (
                        insn.src == 10 or insn.src in ptrs):
                    escaped = True  # a stack pointer stored to memory: stop tracking
                if base is not None:
                    if atomic:
                        read = _access_mask(base, insn.off, insn.size_bytes)
                    elif isinstance(base, int):
                        mask = _range_mask(base + insn.off, insn.size_bytes)
                        if mask is not None:
                            kind, kill = _STACK_STORE, mask
            elif cls in _JMP_CLASSES and op & 0xF0 == J_CALL:
                passed = False
                args = call_args_mask(insn)
                for r in range(1, 6):
                    offset = ptrs.get(r) if args >> r & 1 else None
                    if offset is not None:
                        read |= _above_mask(offset)
                        passed = True
                for r in range(6):
                    ptrs.pop(r, None)
                if passed and (insn.src != CALL_HELPER or op & SRC_X
                               or insn.imm in _ALIASING_HELPERS):
                    # A subprogram, a kfunc (a dynptr slice) or bpf_dynptr_data given a
                    # stack pointer may return a pointer into the same frame.
                    ptrs[0] = ANY_OFFSET
                facts[i] = (kind, uses, defs, read, kill)
                continue
            facts[i] = (kind, uses, defs, read, kill)
            if defs and ptrs:
                for r in [r for r in ptrs if defs >> r & 1]:
                    del ptrs[r]
        for succ in blocks[start].succs:
            if succ not in reachable:
                continue
            old = block_in.get(succ)
            if old is None:
                block_in[succ] = dict(ptrs)
            else:
                joined = _join_pointers(old, ptrs)
                if joined == old:
                    continue
                block_in[succ] = joined
            if succ not in queued:
                queued.add(succ)
                work.append(succ)
    if escaped:
        # Keep every store; stack liveness is then irrelevant.
        facts = {i: (_FIXED if kind == _STACK_STORE else kind, uses, defs, 0, 0)
                 for i, (kind, uses, defs, _, _) in facts.items()}
    return facts


def _access_mask(base: int | str, off: int, size: int) -> int:
    """Stack bytes a load or atomic through a stack pointer may read."""
    mask = _range_mask(base + off, size) if isinstance(base, int) else None
    return ALL_STACK if mask is None else mask


def _transfer(facts: dict[int, tuple[int, int, int, int, int]], start: int, end: int,
              regs: int, stack: int, dead: list[int] | None) -> tuple[int, int]:
    """Backward through instructions [start, end): live registers and stack bytes before
    them, given those live after. Dead instructions (appended to `dead`) read nothing."""
    for i in range(end - 1, start - 1, -1):
        kind, uses, defs, read, kill = facts[i]
        if kind == _PURE:
            if not regs & defs:
                if dead is not None:
                    dead.append(i)
                continue
            regs = (regs & ~defs) | uses
            stack |= read
        elif kind == _STACK_STORE:
            if not stack & kill:
                if dead is not None:
                    dead.append(i)
                continue
            regs |= uses
            stack &= ~kill
        else:
            regs = (regs & ~defs) | uses
            if read or kill:
                stack = (stack & ~kill) | read
    return regs, stack


def _dead_instructions(program: Program, cfg: CFG, order: Sequence[int],
                       effects: Sequence[tuple[int, int, bool]], dead_stores: bool) -> list[int]:
    """Instructions of the reachable blocks of one function that no execution observes."""
    facts = _instruction_facts(program, cfg, order, effects, dead_stores)
    blocks = cfg.blocks
    reachable = set(order)
    live_in: dict[int, tuple[int, int]] = {}
    work = deque(reversed(order))  # postorder: successors first
    queued = set(order)
    while work:
        start = work.popleft()
        queued.discard(start)
        block = blocks[start]
        regs = stack = 0
        for succ in block.succs:
            r, s = live_in.get(succ, (0, 0))
            regs |= r
            stack |= s
        new = _transfer(facts, block.start, block.end, regs, stack, None)
        if live_in.get(start) == new:
            continue
        live_in[start] = new
        for pred in block.preds:
            if pred in reachable and pred not in queued:
                queued.add(pred)
                work.append(pred)
    dead: list[int] = []
    for start in order:
        block = blocks[start]
        regs = stack = 0
        for succ in block.succs:
            r, s = live_in.get(succ, (0, 0))
            regs |= r
            stack |= s
        _transfer(facts, block.start, block.end, regs, stack, dead)
    return dead


# --- one round --------------------------------------------------------------------------------


def _reachability(program: Program) -> tuple[bytearray, list[tuple[CFG, list[int]]]]:
    """Which instructions the entry function reaches, following calls and function
    references in reachable code; plus the CFG and reverse postorder of each reached
    function."""
    insns = program.insns
    labels = program.labels
    reachable = bytearray(len(insns))
    if not insns:
        return reachable, []
    functions = program.functions()
    by_start = {f.start: f for f in functions}
    pending = [functions[0]]
    seen = {functions[0].start}
    cfgs: list[tuple[CFG, list[int]]] = []
    while pending:
        cfg = build_cfg(program, pending.pop())
        order = cfg.reverse_postorder()
        cfgs.append((cfg, order))
        for start in order:
            block = cfg.blocks[start]
            for i in range(block.start, block.end):
                reachable[i] = 1
                insn = insns[i]
                if (insn.is_pseudo_call or insn.is_func_load) and insn.reference is not None:
                    target = labels[insn.reference]
                    if target not in seen:
                        seen.add(target)
                        pending.append(by_start[target])
    return reachable, cfgs


# Jumps are not threaded further than this many slots: a conditional jump's offset has 16
# bits, and threading may lengthen a jump.
_MAX_THREAD_SPAN = 0x7000


def _thread_jumps(program: Program, counts: dict[str, int]) -> Program:
    """Send every jump whose target is a `goto` straight to the final target. Only
    references change, so instruction indices and labels stay as they are."""
    insns = program.insns
    labels = program.labels
    chains = {i for i, insn in enumerate(insns)
              if insn.opcode == _JA and insn.reference is not None}
    if not chains:
        return program
    slots: list[int] | None = None
    out: list[Instruction] | None = None
    for i, insn in enumerate(insns):
        if not insn.is_branch or insn.reference is None:
            continue
        reference = insn.reference
        target = labels[reference]
        seen: set[int] = set()
        while target in chains and target not in seen:
            seen.add(target)
            reference = insns[target].reference  # type: ignore[assignment]
            target = labels[reference]
        if reference == insn.reference:
            continue
        if slots is None:
            slots = program.slot_offsets()
        if abs(slots[target] - slots[i]) >= _MAX_THREAD_SPAN:
            continue
        if out is None:
            out = list(insns)
        out[i] = insn.with_reference(reference)
        counts["threaded"] += 1
    if out is None:
        return program
    return Program(program.name, tuple(out), dict(labels))


def _round(program: Program, dead_stores: bool, counts: dict[str, int]
           ) -> tuple[Program, dict[int, Sequence[Instruction]], bool]:
    """Threaded jumps, then deletions for one round, and whether another round may find
    more.

    Jumps made redundant by unreachable code go before liveness is computed (a jump whose
    edges both lead to the same place changes no path, only what it reads), so the
    registers they compared die in the same round. Strong liveness finds every dead
    definition and store of the CFG at once. Only a conditional jump made redundant by a
    dead definition, a removed function reference (the function is then unreachable) or a
    jump target moving onto a `goto` gives the next round work.
    """
    program = _thread_jumps(program, counts)
    insns = program.insns
    n = len(insns)
    reachable, cfgs = _reachability(program)
    edits: dict[int, Sequence[Instruction]] = {}
    for i in range(n):
        if not reachable[i]:
            edits[i] = ()
    counts["unreachable"] += len(edits)
    _redundant_jumps(program, edits, counts)  # liveness below ignores what they read
    effects: list[tuple[int, int, bool]] = [(0, 0, False)] * n
    for i, insn in enumerate(insns):
        if reachable[i] and i not in edits:
            uses, defs = register_effects(insn)
            effects[i] = (uses, defs, is_pure(insn))
    again = False
    for cfg, order in cfgs:
        for i in _dead_instructions(program, cfg, order, effects, dead_stores):
            edits[i] = ()
            counts["dead_stores" if insns[i].is_store else "dead_defs"] += 1
            again = again or insns[i].is_func_load
    more, next_alive = _redundant_jumps(program, edits, counts)
    again = again or more
    if not again:
        # A deleted jump target passes its label on: if that lands on a `goto`, the next
        # round threads the jumps to it.
        labels = program.labels
        again = any(insn.is_branch and insn.reference is not None
                    and labels[insn.reference] in edits
                    and insns[next_alive[labels[insn.reference]]].opcode == _JA
                    for k, insn in enumerate(insns) if k not in edits)
    return program, edits, again


def _redundant_jumps(program: Program, edits: dict[int, Sequence[Instruction]],
                     counts: dict[str, int]) -> tuple[bool, list[int]]:
    """Delete (in `edits`) jumps to where execution goes anyway once the instructions
    already in `edits` are gone. Works from the last instruction to the first, so that a
    removed jump can make the one before it redundant too. Returns whether a conditional
    jump went, and next_alive: next_alive[k] is the first surviving instruction at or
    after k."""
    insns = program.insns
    labels = program.labels
    n = len(insns)
    conditional = False
    next_alive = list(range(n + 1))
    for k in range(n - 1, -1, -1):
        insn = insns[k]
        if k not in edits and insn.is_branch and insn.reference is not None:
            target = labels[insn.reference]
            if target > k and next_alive[k + 1] == next_alive[target]:
                edits[k] = ()
                counts["jumps"] += 1
                conditional = conditional or insn.is_conditional_jump
        if k in edits:
            next_alive[k] = next_alive[k + 1]
    return conditional, next_alive


__all__ = ["ALL_STACK", "DeadCodeElimination", "apply_edits", "eliminate_dead_code", "is_pure",
           "register_effects", "remove_unreachable"]
