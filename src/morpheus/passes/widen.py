"""Byte-wise packet copies made wide: gathers become one load, scatters one store.

Clang copies packet bytes of unknown alignment one byte at a time (`__builtin_memcpy` of a
MAC address into a key, the 12 bytes a VLAN tag push or pop moves): a 6-byte key costs a
dozen loads, shifts and ORs, a 12-byte move around forty instructions. Packet access needs
no alignment on this kernel's architectures, so:

- **gathers**: where a register stored to memory holds exactly bytes [k, k + n) of the
  packet, little-endian, n in 2, 4, 8 (built from narrower loads, shifts, ORs and byte
  masks), one n-byte load of those bytes is put right before the store; the chain that
  built the value becomes dead and `dce` removes it;
- **scatters**: byte stores of one register's bytes 0..n-1 (shifted copies of it, n in
  2, 4, 8) to packet bytes [k, k + n) become one n-byte store of the register, at the
  place of the last of them.

Each basic block is followed on its own (registers' contents are not known at its start).
A packet load is only widened where no store outside the stack and no call came between
the bytes' loads and the new load; a scatter only where nothing but stack accesses and
register arithmetic sits between its first and last byte store. Packet pointers are those
the value analysis calls packet pointers; the new access uses a register that holds the
same pointer (same definition, known offset), so the verifier's range check covers it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..analysis.cfg import build_cfg
from ..analysis.values import K_PKT, K_STACK, analyze_values
from ..ir import Instruction, Program, asm
from ..ir.asm import Reg
from ..ir.edit import rewrite
from ..ir.opcodes import (
    C_ALU,
    C_ALU64,
    C_LDX,
    C_STX,
    M_MEM,
    OP_ADD,
    OP_AND,
    OP_LSH,
    OP_MOV,
    OP_OR,
    OP_RSH,
    SRC_X,
)
from .dce import register_effects
from .pipeline import PassContext, register
from .shadow import live_in

WIDTHS = (2, 4, 8)
_ZERO = 0  # a byte known to be zero
Byte = tuple[int, int] | int  # (pointer definition, offset) of a packet byte, or _ZERO
Bytes = tuple[Byte, ...]  # a register's 8 bytes, least significant first


@register
@dataclass(frozen=True)
class WidenBytes:
    """Wide packet loads and stores for byte-wise copies (see the module docstring)."""

    name: ClassVar[str] = "widen"

    def run(self, program: Program, ctx: PassContext) -> Program:
        functions = program.functions()
        if not functions:
            return program
        analysis = analyze_values(program, ctx.prog_type,
                                  {n: s.type for n, s in ctx.maps.items()})
        cfg = build_cfg(program, functions[0])
        live = live_in(program, functions[0].end)
        edits: dict[int, list[Instruction]] = {}
        counts = {"loads": 0, "stores": 0}
        for start in sorted(cfg.reachable()):
            block = cfg.blocks[start]
            _Block(program, analysis.states, block.start, block.end, edits, counts,
                   live).run()
        stats = ctx.stats.setdefault(self.name, {})
        for key, value in counts.items():
            stats[key] = stats.get(key, 0) + value
        return rewrite(program, edits) if edits else program


@dataclass
class _Scatter:
    index: int  # the byte store
    root: int  # pointer definition of its base
    addr: int  # byte offset from that definition
    token: int  # definition of the register whose byte it stores
    byte: int  # which byte of it
    holders: frozenset[int]  # registers holding that definition unshifted, there
    base: int  # base register and its offset from `root`
    base_off: int


class _Block:
    def __init__(self, program: Program, states: list, start: int, end: int,  # type: ignore[type-arg]
                 edits: dict[int, list[Instruction]], counts: dict[str, int],
                 live: list[int]) -> None:
        self.program, self.states, self.start, self.end = program, states, start, end
        self.edits, self.counts, self.live = edits, counts, live
        # Pointer definitions whose last holder was overwritten: where, by which register,
        # at which offset it held it.
        self.lost: dict[int, tuple[int, int, int]] = {}
        self.next_token = 0
        # Per register: its definition (token), pointer (definition, offset) if it is one,
        # its bytes if known, and (definition, shift in bytes, width in bytes) if it is a
        # shifted copy of a definition.
        self.token: list[int] = [self._new() for _ in range(11)]
        self.ptr: list[tuple[int, int] | None] = [(self.token[r], 0) for r in range(11)]
        self.bytes: list[Bytes | None] = [None] * 11
        self.built: list[bool] = [False] * 11  # bytes came from more than one load
        self.shr: list[tuple[int, int, int] | None] = [(self.token[r], 0, 8) for r in range(11)]
        self.scatters: list[_Scatter] = []
        self.barriers: list[int] = []

    def _new(self) -> int:
        self.next_token += 1
        return self.next_token

    def _define(self, r: int, at: int | None = None) -> None:
        old = self.ptr[r]
        if at is not None and old is not None and not any(
                self.ptr[o] is not None and self.ptr[o][0] == old[0]  # type: ignore[index]
                for o in range(11) if o != r):
            self.lost[old[0]] = (at, r, old[1])
        self.token[r] = self._new()
        self.ptr[r] = (self.token[r], 0)
        self.bytes[r] = None
        self.built[r] = False
        self.shr[r] = (self.token[r], 0, 8)

    def _forget_packet_bytes(self) -> None:
        for r in range(11):
            if self.bytes[r] is not None and any(b != _ZERO for b in self.bytes[r]):
                self.bytes[r] = None

    def run(self) -> None:
        for i in range(self.start, self.end):
            self._step(i)
        self._scatter()

    def _kind(self, i: int, r: int) -> int | None:
        state = self.states[i]
        return None if state is None else state.regs[r].kind

    def _step(self, i: int) -> None:
        self._at = i
        insn = self.program.insns[i]
        op = insn.opcode
        cls = op & 0x07
        if cls == C_STX and op & 0xE0 == M_MEM:
            self._store(i, insn)
            return
        if insn.is_store or insn.is_atomic:
            if self._kind(i, insn.dst) != K_STACK:
                self._forget_packet_bytes()
                self.barriers.append(i)
            if insn.is_atomic:  # fetching forms write src (cmpxchg r0)
                self._define(insn.src)
                self._define(0)
            return
        if cls == C_LDX and op & 0xE0 == M_MEM:
            kind = self._kind(i, insn.src)
            if kind != K_STACK:
                self.barriers.append(i)
            src_ptr = self.ptr[insn.src]
            dst = insn.dst
            self._define(dst, i)
            if kind == K_PKT and src_ptr is not None:
                size = insn.size_bytes
                root, off = src_ptr
                self.bytes[dst] = tuple((root, off + insn.off + k) for k in range(size)) + \
                    (_ZERO,) * (8 - size)
            return
        if cls in (C_ALU, C_ALU64):
            self._alu(insn, cls == C_ALU64)
            return
        if insn.is_call:
            for r in range(6):
                self._define(r)
            self._forget_packet_bytes()
            self.barriers.append(i)
            return
        if insn.is_ld_imm64:
            self._define(insn.dst)
            return
        if cls not in (0x05, 0x06):  # not a jump: legacy packet loads and the like
            for r in range(6):
                self._define(r)
            self.barriers.append(i)

    def _alu(self, insn: Instruction, wide: bool) -> None:
        d = insn.dst
        aop = insn.opcode & 0xF0
        x = bool(insn.opcode & SRC_X)
        width = 8 if wide else 4
        if aop == OP_MOV and insn.off == 0:
            if x:
                s = insn.src
                self.token[d] = self.token[s] if wide else self._new()
                self.ptr[d] = self.ptr[s] if wide else None
                self.bytes[d] = _truncate(self.bytes[s], width)
                self.built[d] = self.built[s]
                sh = self.shr[s]
                self.shr[d] = None if sh is None else (sh[0], sh[1], min(sh[2], width))
            else:
                self._define(d)
                if insn.imm == 0:
                    self.bytes[d] = (_ZERO,) * 8
            return
        old_bytes, old_ptr, old_shr, built = self.bytes[d], self.ptr[d], self.shr[d], self.built[d]
        self._define(d, self._at)
        if not x and aop == OP_ADD and wide and old_ptr is not None:
            self.ptr[d] = (old_ptr[0], old_ptr[1] + insn.imm)
            return
        if not x and aop in (OP_LSH, OP_RSH) and insn.imm % 8 == 0:
            n = insn.imm // 8
            if old_bytes is not None:
                b = _truncate(old_bytes, width)
                assert b is not None
                if aop == OP_LSH:
                    moved = (_ZERO,) * n + b[:width - n] if n < width else (_ZERO,) * width
                else:
                    moved = b[n:width] + (_ZERO,) * min(n, width) if n < width \
                        else (_ZERO,) * width
                self.bytes[d] = _truncate(tuple(moved) + (_ZERO,) * (8 - width), width)
                self.built[d] = built or n > 0
            if aop == OP_RSH and old_shr is not None:
                token, shift, w = old_shr
                w = min(w, width)
                self.shr[d] = (token, shift + n, w - n) if n < w else None
            return
        if not x and aop == OP_AND and old_bytes is not None:
            mask = insn.imm & 0xFFFFFFFFFFFFFFFF if wide else insn.imm & 0xFFFFFFFF
            out: list[Byte] = []
            for k in range(8):
                m = (mask >> (8 * k)) & 0xFF
                if m == 0xFF:
                    out.append(old_bytes[k])
                elif m == 0 or old_bytes[k] == _ZERO:
                    out.append(_ZERO)
                else:
                    return
            self.bytes[d] = _truncate(tuple(out), width)
            self.built[d] = built
            return
        if x and aop == OP_OR and old_bytes is not None and self.bytes[insn.src] is not None:
            other = self.bytes[insn.src]
            assert other is not None
            merged: list[Byte] = []
            for a, b in zip(old_bytes, other, strict=True):
                if a == _ZERO:
                    merged.append(b)
                elif b == _ZERO:
                    merged.append(a)
                else:
                    return
            self.bytes[d] = _truncate(tuple(merged), width)
            self.built[d] = True

    def _store(self, i: int, insn: Instruction) -> None:
        base_kind = self._kind(i, insn.dst)
        src = insn.src
        size = insn.size_bytes
        value = self.bytes[src]
        if self.built[src] and value is not None and src != insn.dst:
            self._gather(i, insn, value)
        base_ptr = self.ptr[insn.dst]
        sh = self.shr[src]
        if base_kind == K_STACK:
            return
        if size == 1 and base_kind == K_PKT and base_ptr is not None and sh is not None \
                and sh[2] >= 1:
            token, byte, _ = sh
            holders = frozenset(r for r in range(10)
                                if (h := self.shr[r]) is not None and h[:2] == (token, 0)
                                and h[2] == 8)
            self.scatters.append(_Scatter(i, base_ptr[0], base_ptr[1] + insn.off, token, byte,
                                          holders, insn.dst, base_ptr[1]))
        else:
            self.barriers.append(i)
        self._forget_packet_bytes()

    def _gather(self, i: int, insn: Instruction, value: Bytes) -> None:
        """Load `value` (bytes of the packet) with one load before the store, if it is a
        contiguous run that a register still points at."""
        n = next((w for w in WIDTHS if all(b == _ZERO for b in value[w:])), 0)
        if n == 0 or any(b == _ZERO for b in value[:n]):
            return
        first = value[0]
        assert isinstance(first, tuple)
        root, k = first
        if any(value[j] != (root, k + j) for j in range(n)):
            return
        base = next((r for r in range(10) if self.ptr[r] is not None and self.ptr[r][0] == root
                     and self._kind(i, r) == K_PKT), None)
        if base is None:
            self._gather_early(i, insn, root, k, n)
            return
        off = k - self.ptr[base][1]  # type: ignore[index]
        if not -0x8000 <= off < 0x8000:
            return
        load = asm.ldx(n, Reg(insn.src), Reg(base), off, note="widened load")
        self.edits[i] = [load, *self.edits.get(i, [insn])]
        self.built[insn.src] = False
        self.counts["loads"] += 1

    def _gather_early(self, i: int, insn: Instruction, root: int, k: int, n: int) -> None:
        """The pointer was overwritten (often by the last byte load itself, `r1 = *(u8 *)(r1
        + 7)`): load the bytes just before that, into a register nothing touches from
        there to the store, and store that register instead."""
        if root not in self.lost:
            return
        at, reg, held = self.lost[root]
        if at in self.edits or self._kind(at, reg) != K_PKT:
            return
        off = k - held
        if not -0x8000 <= off < 0x8000:
            return
        busy = self.live[at] | (1 << 10)
        for j in range(at, i + 1):
            reads, writes = register_effects(self.program.insns[j])
            busy |= reads | writes
        free = next((r for r in range(10) if not busy >> r & 1), None)
        if free is None:
            return
        at_insn = self.program.insns[at]
        self.edits[at] = [asm.ldx(n, Reg(free), Reg(reg), off, note="widened load"), at_insn]
        self.edits[i] = [insn._replace(src=free)]
        self.counts["loads"] += 1

    def _scatter(self) -> None:
        """Byte stores of one register's bytes 0..n-1 to n consecutive packet bytes, with
        nothing in between that could read or write them, become one store."""
        taken: set[int] = set()
        for n in (8, 4, 2):
            groups: dict[tuple[int, int, int], list[_Scatter]] = {}
            for s in self.scatters:
                if s.index not in taken:
                    groups.setdefault((s.root, s.token, s.addr - s.byte), []).append(s)
            for (_, _, k), members in groups.items():
                chosen = sorted((s for s in members if s.byte < n), key=lambda s: s.index)
                if sorted(s.byte for s in chosen) != list(range(n)):
                    continue
                lo, hi = chosen[0].index, chosen[-1].index
                if any(lo < b < hi for b in self.barriers):
                    continue
                others = [s for s in self.scatters if lo <= s.index <= hi and s not in chosen
                          and s.root == chosen[0].root and k <= s.addr < k + n]
                if others:
                    continue
                # The wide store goes where a register still holds the whole value (the
                # byte stores around it touch only these bytes, nothing reads them).
                at = next((s for s in chosen if s.holders), None)
                if at is None:
                    continue
                off = k - at.base_off
                if not -0x8000 <= off < 0x8000:
                    continue
                for s in chosen:
                    self.edits[s.index] = []
                self.edits[at.index] = [asm.stx(n, Reg(at.base), off, Reg(min(at.holders)),
                                                note="widened store")]
                taken.update(s.index for s in chosen)
                self.counts["stores"] += 1


def _truncate(value: Bytes | None, width: int) -> Bytes | None:
    if value is None or width == 8:
        return value
    return value[:width] + (_ZERO,) * (8 - width)
