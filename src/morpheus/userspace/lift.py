"""Lifting a `Program` to LLVM IR (text), one eBPF instruction at a time.

Each eBPF function (the entry and every bpf-to-bpf subprogram) becomes its own LLVM function
`i64 (i64 r1, ..., i64 r5, i64 ctx)` with its own 512-byte stack; registers are SSA values
the lifter builds itself (phis at block joins, see `ssa`), so LLVM gets no register traffic
through memory to promote. `ctx` is the program's context, threaded through calls
so that helpers which need it (redirect, bpf_loop) get it whatever r1 holds by then. Pointers
are plain 64-bit addresses: packet data, map values, the stack. Packet frames live below
4 GiB, so the 32-bit `data`/`data_end` fields of `struct xdp_md` hold real addresses.

Text rather than llvmlite.ir: building IR objects in Python costs several times more than
formatting lines, and lifting is on the path of every specialization.

Semantics follow the kernel's (Documentation/bpf/standardization/instruction-set.rst and the
verifier's rewrites): division by zero gives 0, modulo by zero leaves the dividend (32-bit:
zero-extended), shift amounts are masked, signed division of the minimum by -1 wraps, 32-bit
results are zero-extended.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..ir import Instruction, Program
from ..ir.helpers import HELPER_NAMES
from ..ir.opcodes import (
    C_ALU,
    C_ALU64,
    C_JMP,
    C_JMP32,
    C_LDX,
    C_ST,
    C_STX,
    LD_IMM64,
    M_ATOMIC,
    M_MEM,
    M_MEMSX,
    PSEUDO_FUNC,
    PSEUDO_MAP_FD,
    PSEUDO_MAP_IDX,
    PSEUDO_MAP_IDX_VALUE,
    PSEUDO_MAP_VALUE,
    PSEUDO_NONE,
    AtomicOp,
)
from .ssa import UNDEF, Registers


class LiftError(ValueError):
    """The program uses something the user-space backend does not implement."""


class UnsupportedHelper(LiftError):
    """A helper call the runtime has no implementation of (named in the message)."""

    def __init__(self, program: str, index: int, helper_id: int) -> None:
        name = HELPER_NAMES[helper_id] if 0 <= helper_id < len(HELPER_NAMES) else "?"
        super().__init__(
            f"program {program}: instruction {index} calls helper bpf_{name} (id {helper_id}), "
            "which the user-space backend does not implement")
        self.helper = name


@dataclass(frozen=True, slots=True)
class MapBinding:
    """What the lifter needs of a user-space map: its header bytes (a constant copy goes into
    the module, so LLVM folds the map's type, sizes and addresses) and its value area."""

    header: bytes
    values_address: int
    type: int = 0


@dataclass(frozen=True, slots=True)
class LiftRequest:
    program: Program
    maps: Mapping[str, MapBinding]
    env_address: int
    helpers: frozenset[str]  # rt_helper_* names the runtime defines
    entry_symbol: str = "morpheus_entry"


# Helpers whose runtime version wants the context or the environment in an argument slot
# the kernel's helper does not use (position 0-based).
_CTX_ARG = {"redirect": 2, "redirect_map": 4, "loop": 4}
_ENV_ARG = {"ktime_get_ns": 4, "ktime_get_boot_ns": 4, "ktime_get_coarse_ns": 4,
            "get_prandom_u32": 4, "get_smp_processor_id": 4}
_TAIL_CALL = 12
_MAP_LOOKUP = 1
# Lookups specialized by map type, used when the lifter knows which map r1 holds.
_TYPED_LOOKUP = {2: "rt_lookup_array", 6: "rt_lookup_percpu_array", 1: "rt_lookup_hash",
                 5: "rt_lookup_hash", 9: "rt_lookup_hash", 10: "rt_lookup_hash",
                 25: "rt_lookup_hash", 11: "rt_lookup_lpm", 12: "rt_lookup_array_of_maps",
                 13: "rt_lookup_hash_of_maps"}

_COND = {0x10: "eq", 0x20: "ugt", 0x30: "uge", 0x50: "ne", 0x60: "sgt", 0x70: "sge",
         0xA0: "ult", 0xB0: "ule", 0xC0: "slt", 0xD0: "sle"}
_SIMPLE = {0x00: "add", 0x10: "sub", 0x20: "mul", 0x40: "or", 0x50: "and", 0xA0: "xor"}
_SHIFT = {0x60: "shl", 0x70: "lshr", 0xC0: "ashr"}
_WIDTH = {0x00: 32, 0x08: 16, 0x10: 8, 0x18: 64}
_RMW = {AtomicOp.ADD: "add", AtomicOp.OR: "or", AtomicOp.AND: "and", AtomicOp.XOR: "xor"}

_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF


def _s64(value: int) -> int:
    value &= _U64
    return value - (1 << 64) if value >> 63 else value


def _s32(value: int) -> int:
    value &= _U32
    return value - (1 << 32) if value >> 31 else value


def _bytes_literal(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:02X}"
                   for b in data)


@dataclass
class _Function:
    name: str
    start: int
    end: int
    regs: Registers
    block: int  # the eBPF block being emitted (its first instruction's index)
    label: str  # the LLVM block being emitted (a tail call splits an eBPF block)
    lines: list[str] = field(default_factory=list)
    tmp: int = 0

    def v(self) -> str:
        self.tmp += 1
        return f"%t{self.tmp}"

    def emit(self, line: str) -> None:
        self.lines.append("  " + line)


def _fn_symbol(name: str) -> str:
    return '@"f.' + name.replace('"', "_") + '"'


class _Lifter:
    def __init__(self, request: LiftRequest) -> None:
        self.req = request
        self.program = request.program
        self.map_globals: dict[str, str] = {}
        self.globals: list[str] = []
        self.declares: set[str] = set()
        self.functions = self.program.functions()
        self.fn_names = {f.name for f in self.functions}
        # register → what it is known to hold: a map (its name) or a stack pointer (offset
        # from r10), from the dataflow at the block's start on (see `block_facts`)
        self.known: dict[int, str | int] = {}
        self.targets: dict[int, int] = {}  # branch → its target, checked once

    # --- module --------------------------------------------------------------------------
    def module(self) -> str:
        bodies = [self.function(f.name, f.start, f.end) for f in self.functions]
        main = _fn_symbol(self.functions[0].name)
        entry = (f"define i64 @{self.req.entry_symbol}(i64 %ctx) {{\n"
                 f"  %r = call i64 {main}(i64 %ctx, i64 0, i64 0, i64 0, i64 0, i64 %ctx)\n"
                 f"  ret i64 %r\n}}\n")
        decls = sorted(self.declares)
        return "\n".join([*self.globals, *decls, *bodies, entry])

    def map_header(self, name: str, index: int) -> str:
        binding = self.req.maps.get(name)
        if binding is None:
            raise LiftError(f"program {self.program.name}: instruction {index} refers to map "
                            f"{name!r}, which the user-space data plane does not have")
        sym = self.map_globals.get(name)
        if sym is None:
            sym = f'@"map.{len(self.map_globals)}"'
            self.map_globals[name] = sym
            self.globals.append(
                f"{sym} = private unnamed_addr constant [{len(binding.header)} x i8] "
                f'c"{_bytes_literal(binding.header)}", align 8')
        return sym

    # --- functions -----------------------------------------------------------------------
    def function(self, name: str, start: int, end: int) -> str:
        insns = self.program.insns
        leaders = self.leaders(start, end)
        succs = self.successors(start, end, leaders)
        facts = self.block_facts(start, end, succs)
        preds: dict[int, list[int]] = {b: [] for b in succs}
        preds[start].append(Registers.ENTRY)
        for block, out in succs.items():
            for succ in out:
                preds[succ].append(block)
        entry = {r: f"%a{r}" if 1 <= r <= 5 else UNDEF for r in range(10)}
        fn = _Function(name, start, end, Registers(preds, entry), Registers.ENTRY, "entry")
        fn.lines.append(f"define internal i64 {_fn_symbol(name)}(i64 %a1, i64 %a2, i64 %a3, "
                        "i64 %a4, i64 %a5, i64 %ctx) {")
        fn.lines.append("entry:")
        fn.emit("%stack = alloca [512 x i8], align 16")
        fn.emit("%fp = getelementptr inbounds i8, ptr %stack, i64 512")
        fn.emit("%fpi = ptrtoint ptr %fp to i64")
        fn.emit(f"br label %L{start}")
        labels = {Registers.ENTRY: "entry"}
        phis_at: dict[int, int] = {}  # block → where in fn.lines its phis go
        terminated = True
        for index in range(start, end):
            if index in leaders or terminated:
                if not terminated:
                    fn.emit(f"br label %L{index}")
                if fn.block != Registers.ENTRY:
                    labels[fn.block] = fn.label
                    fn.regs.end(fn.block, succs[fn.block])
                fn.lines.append(f"L{index}:")
                phis_at[index] = len(fn.lines)
                fn.block, fn.label = index, f"L{index}"
                fn.regs.begin(index)
                terminated = False
                self.known = dict(facts.get(index) or {})
            terminated = self.instruction(fn, index, insns[index])
            self.track_maps(insns[index])
        if not terminated:
            # The verifier forbids falling off the end; keep LLVM's IR well-formed anyway.
            fn.emit("unreachable")
        labels[fn.block] = fn.label
        fn.regs.end(fn.block, succs[fn.block])
        fn.regs.finish()
        # One text per block (its phis go first), rewritten in one pass: per-line work in
        # Python would cost more than the loads and stores the phis replace.
        cuts = [*phis_at.values(), len(fn.lines)]
        segments = ["\n".join(fn.lines[:cuts[0]])]
        segments += ["\n".join(fn.lines[a:b]) for a, b in itertools.pairwise(cuts)]
        phis = fn.regs.phi_lines(segments, labels)
        out = [segments[0]]
        for block, segment in zip(phis_at, segments[1:], strict=True):
            out.extend(phis.get(block, ()))
            out.append(segment)
        out.append("}")
        return fn.regs.substitute("\n".join(out))

    def leaders(self, start: int, end: int) -> set[int]:
        out = {start}
        for index in range(start, end):
            insn = self.program.insns[index]
            if insn.is_branch:
                out.add(self.target(index, start, end))
                out.add(index + 1)
            elif insn.is_exit:
                out.add(index + 1)
        return out

    def target(self, index: int, start: int, end: int) -> int:
        cached = self.targets.get(index)
        if cached is not None:
            return cached
        insn = self.program.insns[index]
        if insn.reference is not None:
            target = self.program.target(index)
        else:
            # Unsymbolized offsets count slots; ld_imm64 takes two.
            raise LiftError(f"program {self.program.name}: instruction {index} has a numeric "
                            "jump offset; lift a symbolized Program")
        if not start <= target < end:
            raise LiftError(f"program {self.program.name}: instruction {index} jumps out of "
                            "its function")
        self.targets[index] = target
        return target

    def track_maps(self, insn: Instruction) -> None:
        _transfer(self.known, insn)

    def successors(self, start: int, end: int, leaders: set[int]) -> dict[int, list[int]]:
        """Each block's successors (one entry per CFG edge: a conditional jump to the next
        instruction is two edges)."""
        insns = self.program.insns
        order = sorted(b for b in leaders if b < end)  # the exit ending the function too
        out: dict[int, list[int]] = {}
        for i, block in enumerate(order):
            last = (order[i + 1] if i + 1 < len(order) else end) - 1
            insn = insns[last]
            if insn.is_exit:
                succs = []
            elif insn.is_unconditional_jump:
                succs = [self.target(last, start, end)]
            elif insn.is_conditional_jump:
                succs = [self.target(last, start, end), last + 1]
            else:
                succs = [last + 1]
            out[block] = [s for s in succs if s < end]
        return out

    def block_facts(self, start: int, end: int, succs: Mapping[int, list[int]]
                    ) -> dict[int, dict[int, str | int]]:
        """What `_transfer` knows at each block's start on every path into it (a forward
        dataflow to a fixpoint; facts only ever get dropped, so it terminates): a map
        loaded in one block and looked up in another (the specializer's guards split them)
        still gets the typed lookup, a key built on the stack still gets a stack address."""
        insns = self.program.insns
        order = sorted(succs)
        ends = {b: order[i + 1] if i + 1 < len(order) else end for i, b in enumerate(order)}
        facts: dict[int, dict[int, str | int]] = {start: {}}
        work = [start]
        while work:
            block = work.pop()
            state = dict(facts[block])
            for insn in insns[block:ends[block]]:
                _transfer(state, insn)
            for succ in succs[block]:
                old = facts.get(succ)
                new = state if old is None else {r: v for r, v in old.items()
                                                 if state.get(r) == v}
                if old is None or new != old:
                    facts[succ] = dict(new)
                    work.append(succ)
        return facts

    # --- helpers for operands ------------------------------------------------------------
    @staticmethod
    def load_reg(fn: _Function, reg: int) -> str:
        if reg == 10:  # read-only: the verifier refuses writes to the frame pointer
            return "%fpi"
        return fn.regs.read(reg)

    @staticmethod
    def store_reg(fn: _Function, reg: int, value: str) -> None:
        fn.regs.write(reg, value)

    @staticmethod
    def clobber(fn: _Function) -> None:
        """After a call r1-r5 are scratch: the verifier lets no program read them again
        before writing them, so they need no value (and join no phi)."""
        for reg in range(1, 6):
            fn.regs.write(reg, UNDEF)

    def stack_offset(self, reg: int) -> int | None:
        """Offset from the frame pointer if `reg` holds a known stack pointer."""
        if reg == 10:
            return 0
        fact = self.known.get(reg)
        return fact if isinstance(fact, int) else None

    def stack_pointer(self, fn: _Function, offset: int) -> str:
        # GEPs on the stack alloca (not inttoptr of an integer): LLVM's alias analysis then
        # knows stack slots apart and forwards stores to loads across packet accesses.
        p = fn.v()
        fn.emit(f"{p} = getelementptr inbounds i8, ptr %stack, i64 {512 + offset}")
        return p

    def helper_arg(self, fn: _Function, reg: int) -> str:
        """A helper's argument: a stack pointer as ptrtoint of its GEP, which folds back to
        the GEP once LLVM inlines the helper (its key compares and hashes then read known
        stack slots)."""
        so = self.stack_offset(reg)
        if so is None or not -512 <= so <= 512:
            return self.load_reg(fn, reg)
        p = self.stack_pointer(fn, so)
        v = fn.v()
        fn.emit(f"{v} = ptrtoint ptr {p} to i64")
        return v

    def address(self, fn: _Function, reg: int, off: int) -> str:
        so = self.stack_offset(reg)
        if so is not None and -512 <= so + off < 512:
            return self.stack_pointer(fn, so + off)
        base = self.load_reg(fn, reg)
        if off:
            a = fn.v()
            fn.emit(f"{a} = add i64 {base}, {off}")
            base = a
        p = fn.v()
        fn.emit(f"{p} = inttoptr i64 {base} to ptr")
        return p

    # --- instructions --------------------------------------------------------------------
    def instruction(self, fn: _Function, index: int, insn: Instruction) -> bool:
        """Emit one instruction; returns whether it terminated the block."""
        op = insn.opcode
        cls = op & 0x07
        if op == LD_IMM64:
            self.ld_imm64(fn, index, insn)
            return False
        if cls in (C_ALU, C_ALU64):
            self.alu(fn, index, insn)
            return False
        if cls == C_LDX:
            self.load(fn, index, insn)
            return False
        if cls in (C_ST, C_STX):
            if (op & 0xE0) == M_ATOMIC:
                self.atomic(fn, index, insn)
            else:
                self.store(fn, index, insn)
            return False
        if cls in (C_JMP, C_JMP32):
            return self.jump(fn, index, insn)
        raise LiftError(f"program {self.program.name}: instruction {index}: opcode {op:#04x} "
                        "(legacy packet access or unknown) is not supported in user space")

    def ld_imm64(self, fn: _Function, index: int, insn: Instruction) -> None:
        src = insn.src
        if src == PSEUDO_NONE and insn.reference is None:
            self.store_reg(fn, insn.dst, str(_s64(insn.imm)))
            return
        if src in (PSEUDO_MAP_FD, PSEUDO_MAP_IDX) and insn.reference is not None:
            sym = self.map_header(insn.reference, index)
            self.store_reg(fn, insn.dst, f"ptrtoint (ptr {sym} to i64)")
            return
        if src in (PSEUDO_MAP_VALUE, PSEUDO_MAP_IDX_VALUE) and insn.reference is not None:
            self.map_header(insn.reference, index)
            address = self.req.maps[insn.reference].values_address + insn.imm
            self.store_reg(fn, insn.dst, str(address))
            return
        if src == PSEUDO_FUNC and insn.reference is not None:
            if insn.reference not in self.fn_names:
                raise LiftError(f"program {self.program.name}: instruction {index} loads the "
                                f"address of unknown function {insn.reference!r}")
            self.store_reg(fn, insn.dst, f"ptrtoint (ptr {_fn_symbol(insn.reference)} to i64)")
            return
        raise LiftError(f"program {self.program.name}: instruction {index}: 64-bit immediate "
                        f"load with src {src} is not supported in user space")

    def alu(self, fn: _Function, index: int, insn: Instruction) -> None:
        op = insn.opcode
        is64 = (op & 0x07) == C_ALU64
        code = op & 0xF0
        from_reg = bool(op & 0x08)
        if code == 0xD0:  # END
            self.byteswap(fn, insn, is64, from_reg)
            return
        ty = "i64" if is64 else "i32"
        dst64 = self.load_reg(fn, insn.dst)
        if is64:
            dst = dst64
        else:
            dst = fn.v()
            fn.emit(f"{dst} = trunc i64 {dst64} to i32")
        if code == 0xB0 or code != 0x80:
            if from_reg:
                s64v = self.load_reg(fn, insn.src)
                if is64:
                    src = s64v
                else:
                    src = fn.v()
                    fn.emit(f"{src} = trunc i64 {s64v} to i32")
            else:
                src = str(_s64(insn.imm) if is64 else _s32(insn.imm))
        width = 64 if is64 else 32
        r = fn.v()
        if code in _SIMPLE:
            fn.emit(f"{r} = {_SIMPLE[code]} {ty} {dst}, {src}")
        elif code in _SHIFT:
            m = fn.v()
            fn.emit(f"{m} = and {ty} {src}, {width - 1}")
            fn.emit(f"{r} = {_SHIFT[code]} {ty} {dst}, {m}")
        elif code == 0x80:  # NEG
            fn.emit(f"{r} = sub {ty} 0, {dst}")
        elif code == 0xB0:  # MOV / MOVSX
            if insn.off in (8, 16, 32) and from_reg and not (insn.off == 32 and not is64):
                t = fn.v()
                fn.emit(f"{t} = trunc {ty} {src} to i{insn.off}")
                fn.emit(f"{r} = sext i{insn.off} {t} to {ty}")
            elif insn.off != 0:
                raise LiftError(f"program {self.program.name}: instruction {index}: mov with "
                                f"offset {insn.off} is not supported in user space")
            elif is64:  # a plain move is no instruction at all: dst now names src's value
                self.store_reg(fn, insn.dst, src)
                return
            else:
                fn.emit(f"{r} = or {ty} {src}, 0")
        elif code in (0x30, 0x90):  # DIV / MOD, unsigned (off 0) or signed (off 1)
            self.divmod(fn, r, ty, dst, src, code == 0x30, insn.off == 1)
        else:
            raise LiftError(f"program {self.program.name}: instruction {index}: ALU opcode "
                            f"{op:#04x} is not supported")
        if is64:
            self.store_reg(fn, insn.dst, r)
        else:
            z = fn.v()
            fn.emit(f"{z} = zext i32 {r} to i64")
            self.store_reg(fn, insn.dst, z)

    @staticmethod
    def divmod(fn: _Function, r: str, ty: str, dst: str, src: str, div: bool,
               signed: bool) -> None:
        zero = fn.v()
        fn.emit(f"{zero} = icmp eq {ty} {src}, 0")
        if not signed:
            safe = fn.v()
            fn.emit(f"{safe} = select i1 {zero}, {ty} 1, {ty} {src}")
            q = fn.v()
            fn.emit(f"{q} = {'udiv' if div else 'urem'} {ty} {dst}, {safe}")
            fn.emit(f"{r} = select i1 {zero}, {ty} {0 if div else dst}, {ty} {q}")
            return
        minus1 = fn.v()
        fn.emit(f"{minus1} = icmp eq {ty} {src}, -1")
        special = fn.v()
        fn.emit(f"{special} = or i1 {zero}, {minus1}")
        safe = fn.v()
        fn.emit(f"{safe} = select i1 {special}, {ty} 1, {ty} {src}")
        q = fn.v()
        fn.emit(f"{q} = {'sdiv' if div else 'srem'} {ty} {dst}, {safe}")
        on_minus1 = fn.v()
        if div:
            fn.emit(f"{on_minus1} = sub {ty} 0, {dst}")
        else:
            fn.emit(f"{on_minus1} = or {ty} 0, 0")
        t = fn.v()
        fn.emit(f"{t} = select i1 {minus1}, {ty} {on_minus1}, {ty} {q}")
        fn.emit(f"{r} = select i1 {zero}, {ty} {0 if div else dst}, {ty} {t}")

    def byteswap(self, fn: _Function, insn: Instruction, is64: bool, to_be: bool) -> None:
        width = insn.imm
        v = self.load_reg(fn, insn.dst)
        swap = is64 or to_be  # ALU64 END is the unconditional bswap; ALU END|X is to-BE
        if width not in (16, 32, 64):
            raise LiftError(f"program {self.program.name}: byte swap of width {width}")
        if width == 64:
            if swap:
                r = fn.v()
                fn.emit(f"{r} = call i64 @llvm.bswap.i64(i64 {v})")
                self.declares.add("declare i64 @llvm.bswap.i64(i64)")
                v = r
            self.store_reg(fn, insn.dst, v)
            return
        t = fn.v()
        fn.emit(f"{t} = trunc i64 {v} to i{width}")
        if swap:
            s = fn.v()
            fn.emit(f"{s} = call i{width} @llvm.bswap.i{width}(i{width} {t})")
            self.declares.add(f"declare i{width} @llvm.bswap.i{width}(i{width})")
            t = s
        z = fn.v()
        fn.emit(f"{z} = zext i{width} {t} to i64")
        self.store_reg(fn, insn.dst, z)

    def load(self, fn: _Function, index: int, insn: Instruction) -> None:
        mode = insn.opcode & 0xE0
        if mode not in (M_MEM, M_MEMSX):
            raise LiftError(f"program {self.program.name}: instruction {index}: load mode "
                            f"{mode:#x} is not supported in user space")
        width = _WIDTH[insn.opcode & 0x18]
        p = self.address(fn, insn.src, insn.off)
        v = fn.v()
        fn.emit(f"{v} = load i{width}, ptr {p}, align 1")
        if width != 64:
            e = fn.v()
            fn.emit(f"{e} = {'sext' if mode == M_MEMSX else 'zext'} i{width} {v} to i64")
            v = e
        self.store_reg(fn, insn.dst, v)

    def store(self, fn: _Function, index: int, insn: Instruction) -> None:
        if (insn.opcode & 0xE0) != M_MEM:
            raise LiftError(f"program {self.program.name}: instruction {index}: store mode "
                            f"{insn.opcode & 0xE0:#x} is not supported")
        width = _WIDTH[insn.opcode & 0x18]
        p = self.address(fn, insn.dst, insn.off)
        if (insn.opcode & 0x07) == C_ST:
            mask = (1 << width) - 1
            value = str(_s64(insn.imm) if width == 64 else insn.imm & mask)
        else:
            value = self.load_reg(fn, insn.src)
            if width != 64:
                t = fn.v()
                fn.emit(f"{t} = trunc i64 {value} to i{width}")
                value = t
        fn.emit(f"store i{width} {value}, ptr {p}, align 1")

    def atomic(self, fn: _Function, index: int, insn: Instruction) -> None:
        width = _WIDTH[insn.opcode & 0x18]
        if width not in (32, 64):
            raise LiftError(f"program {self.program.name}: instruction {index}: {width}-bit "
                            "atomics are not supported")
        ty = f"i{width}"
        p = self.address(fn, insn.dst, insn.off)
        imm = insn.imm

        def src_value() -> str:
            v = self.load_reg(fn, insn.src)
            if width == 32:
                t = fn.v()
                fn.emit(f"{t} = trunc i64 {v} to i32")
                return t
            return v

        def widen(v: str) -> str:
            if width == 64:
                return v
            z = fn.v()
            fn.emit(f"{z} = zext i32 {v} to i64")
            return z

        if imm == AtomicOp.CMPXCHG:
            expected = self.load_reg(fn, 0)
            if width == 32:
                t = fn.v()
                fn.emit(f"{t} = trunc i64 {expected} to i32")
                expected = t
            new = src_value()
            pair = fn.v()
            fn.emit(f"{pair} = cmpxchg ptr {p}, {ty} {expected}, {ty} {new} seq_cst seq_cst, "
                    f"align {width // 8}")
            old = fn.v()
            fn.emit(f"{old} = extractvalue {{ {ty}, i1 }} {pair}, 0")
            self.store_reg(fn, 0, widen(old))
            return
        if imm == AtomicOp.XCHG:
            old = fn.v()
            fn.emit(f"{old} = atomicrmw xchg ptr {p}, {ty} {src_value()} seq_cst, "
                    f"align {width // 8}")
            self.store_reg(fn, insn.src, widen(old))
            return
        if imm == AtomicOp.LOAD_ACQ:
            v = fn.v()
            p2 = self.address(fn, insn.src, insn.off)
            fn.emit(f"{v} = load atomic {ty}, ptr {p2} acquire, align {width // 8}")
            self.store_reg(fn, insn.dst, widen(v))
            return
        base = imm & ~AtomicOp.FETCH
        if base not in _RMW or imm & ~0xF1:
            raise LiftError(f"program {self.program.name}: instruction {index}: atomic "
                            f"operation {imm:#x} is not supported")
        old = fn.v()
        fn.emit(f"{old} = atomicrmw {_RMW[base]} ptr {p}, {ty} {src_value()} seq_cst, "
                    f"align {width // 8}")
        if imm & AtomicOp.FETCH:
            self.store_reg(fn, insn.src, widen(old))

    def jump(self, fn: _Function, index: int, insn: Instruction) -> bool:
        op = insn.opcode
        code = op & 0xF0
        if insn.is_exit:
            v = self.load_reg(fn, 0)
            fn.emit(f"ret i64 {v}")
            return True
        if insn.is_call:
            self.call(fn, index, insn)
            return False
        if insn.is_unconditional_jump:
            fn.emit(f"br label %L{self.target(index, fn.start, fn.end)}")
            return True
        if not insn.is_conditional_jump:
            raise LiftError(f"program {self.program.name}: instruction {index}: jump opcode "
                            f"{op:#04x} is not supported in user space")
        is32 = (op & 0x07) == C_JMP32
        ty = "i32" if is32 else "i64"
        a = self.load_reg(fn, insn.dst)
        if op & 0x08:
            b = self.load_reg(fn, insn.src)
        else:
            b = str(_s32(insn.imm) if is32 else _s64(_s32(insn.imm)))
        if is32:
            ta = fn.v()
            fn.emit(f"{ta} = trunc i64 {a} to i32")
            a = ta
            if op & 0x08:
                tb = fn.v()
                fn.emit(f"{tb} = trunc i64 {b} to i32")
                b = tb
        c = fn.v()
        if code == 0x40:  # JSET
            t = fn.v()
            fn.emit(f"{t} = and {ty} {a}, {b}")
            fn.emit(f"{c} = icmp ne {ty} {t}, 0")
        else:
            fn.emit(f"{c} = icmp {_COND[code]} {ty} {a}, {b}")
        target = self.target(index, fn.start, fn.end)
        fn.emit(f"br i1 {c}, label %L{target}, label %L{index + 1}")
        return True

    def call(self, fn: _Function, index: int, insn: Instruction) -> None:
        if insn.is_pseudo_call:
            if insn.reference is None or insn.reference not in self.fn_names:
                raise LiftError(f"program {self.program.name}: instruction {index} calls an "
                                "unknown subprogram")
            args = [self.load_reg(fn, r) for r in range(1, 6)]
            r = fn.v()
            fn.emit(f"{r} = call i64 {_fn_symbol(insn.reference)}("
                    + ", ".join(f"i64 {a}" for a in args) + ", i64 %ctx)")
            self.clobber(fn)
            self.store_reg(fn, 0, r)
            return
        if not insn.is_helper_call:
            raise LiftError(f"program {self.program.name}: instruction {index}: kfunc calls are "
                            "not supported in user space")
        helper = insn.imm
        if helper == _TAIL_CALL:
            self.tail_call(fn, index)
            return
        name = HELPER_NAMES[helper] if 0 <= helper < len(HELPER_NAMES) else ""
        symbol = f"rt_helper_{name}"
        if not name or symbol not in self.req.helpers:
            raise UnsupportedHelper(self.program.name, index, helper)
        if helper == _MAP_LOOKUP and isinstance(self.known.get(1), str):
            typed = _TYPED_LOOKUP.get(self.req.maps[str(self.known[1])].type)
            if typed is not None:
                args = [self.helper_arg(fn, r) for r in (1, 2)]
                self.declares.add(f"declare i64 @{typed}(i64, i64)")
                r = fn.v()
                fn.emit(f"{r} = call i64 @{typed}(i64 {args[0]}, i64 {args[1]})")
                self.clobber(fn)
                self.store_reg(fn, 0, r)
                return
        fixed = {_CTX_ARG.get(name): "%ctx", _ENV_ARG.get(name): str(self.req.env_address)}
        args = [fixed.get(slot) or self.helper_arg(fn, slot + 1) for slot in range(5)]
        self.declares.add(f"declare i64 @{symbol}(i64, i64, i64, i64, i64)")
        r = fn.v()
        fn.emit(f"{r} = call i64 @{symbol}(" + ", ".join(f"i64 {a}" for a in args) + ")")
        self.clobber(fn)
        self.store_reg(fn, 0, r)

    def tail_call(self, fn: _Function, index: int) -> None:
        self.declares.add("declare i64 @rt_tail_call_target(i64, i64, i64)")
        ctx, prog_array, slot = (self.load_reg(fn, r) for r in (1, 2, 3))
        t = fn.v()
        fn.emit(f"{t} = call i64 @rt_tail_call_target(i64 {ctx}, i64 {prog_array}, i64 {slot})")
        found = fn.v()
        fn.emit(f"{found} = icmp ne i64 {t}, 0")
        fn.emit(f"br i1 {found}, label %tc{index}, label %tc{index}.miss")
        fn.lines.append(f"tc{index}:")
        target = fn.v()
        fn.emit(f"{target} = inttoptr i64 {t} to ptr")
        r = fn.v()
        fn.emit(f"{r} = tail call i64 {target}(i64 {ctx})")
        fn.emit(f"ret i64 {r}")
        fn.lines.append(f"tc{index}.miss:")
        fn.label = f"tc{index}.miss"
        self.clobber(fn)


def lift(request: LiftRequest) -> str:
    """The program as an LLVM module (text) with one exported function,
    `i64 <entry_symbol>(i64 ctx)`."""
    if not request.program.insns:
        raise LiftError(f"program {request.program.name} is empty")
    return _Lifter(request).module()


def _transfer(known: dict[int, str | int], insn: Instruction) -> None:
    """What one instruction does to the registers known to hold a map (ld_imm64 of a map,
    copied by mov: a lookup on it calls the runtime's code for that map type only) or a
    stack pointer (r10 plus a constant: its memory accesses address the stack alloca)."""
    op = insn.opcode
    if insn.is_call:
        for r in range(6):
            known.pop(r, None)
    elif op == LD_IMM64 and insn.src in (PSEUDO_MAP_FD, PSEUDO_MAP_IDX) and insn.reference:
        known[insn.dst] = insn.reference
    elif op == 0xBF and insn.off == 0:  # mov64 dst, src
        if insn.src == 10:
            known[insn.dst] = 0
        elif insn.src in known:
            known[insn.dst] = known[insn.src]
        else:
            known.pop(insn.dst, None)
    elif op in (0x07, 0x17) and isinstance(known.get(insn.dst), int):  # add64/sub64 imm
        delta = _s32(insn.imm)
        known[insn.dst] = known[insn.dst] + (delta if op == 0x07 else -delta)  # type: ignore[operator]
    elif (op & 0x07) in (C_ALU, C_ALU64, C_LDX) or op == LD_IMM64:
        known.pop(insn.dst, None)
    elif (op & 0xE0) == M_ATOMIC and (op & 0x07) == C_STX:
        known.pop(insn.src, None)
        known.pop(0, None)
