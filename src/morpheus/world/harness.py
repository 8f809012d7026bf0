"""The check harness: a bytecode rewrite that makes a program's runs comparable.

Two things a BPF_PROG_TEST_RUN does not let us compare are made visible here, by rewriting
helper calls identically in every program that is checked:

- **Nondeterministic helpers** (`ktime_get_*`, `jiffies64`, `get_prandom_u32`,
  `get_smp_processor_id`) become loads from a single-entry array, the world map, which the
  runner fills before every packet. Every call of one helper during packet `i` returns the
  same value, a function of (helper, i) only: plausible (the clocks start at the real clock
  read once per check), distinct per packet, and decodable back to the helper and packet
  that produced it (`describe_value`).

  Why "same value for every call in a packet" and not a running sequence: how many times a
  program reads the clock or the random generator while handling one packet is not
  behaviour anyone can observe, and specialized code legitimately calls them a different
  number of times (a dead timestamp dropped, a call hoisted out of a branch folded away).
  A sequence would turn each of those into a false alarm. What is observable is where the
  values go — which map entry, which packet byte, which branch they steer — and that is
  compared in full. The price: a miscompile that swaps two reads of the clock within one
  packet is invisible; with real helpers it would be indistinguishable from timing noise.

- **Redirects** (`bpf_redirect`, `bpf_redirect_map`, `bpf_redirect_peer`,
  `bpf_redirect_neigh`) keep calling the real helper (its return value, e.g. the fallback
  action of a `redirect_map` miss, stays real), but first record their arguments in the world
  map: helper, ifindex or map + key, flags, and a count. The last call is the one the kernel
  acts on, so that is the one recorded.

Pure: no syscalls; the runner (`world.run`) owns the map this rewrite refers to.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from ..analysis.values import analyze_values, map_name
from ..ir import Instruction, Program, asm
from ..ir.asm import R0, R1, R2, R3, R4, R5
from ..ir.edit import rewrite
from ..ir.helpers import HELPER_IDS
from ..obj import MapSpec
from ..uapi import MapType, ProgType

CLOCK_MAP = "morpheus_clock"  # the helper results of the packet being run
REDIRECT_MAP = "morpheus_redir"  # the last redirect call's arguments, and a call count

# Helpers whose result is replaced, in the order of their slots in the world map's value.
NONDETERMINISTIC = ("ktime_get_ns", "ktime_get_boot_ns", "ktime_get_coarse_ns",
                    "ktime_get_tai_ns", "jiffies64", "get_prandom_u32",
                    "get_smp_processor_id")
_NONDET_IDS = {HELPER_IDS[name]: slot for slot, name in enumerate(NONDETERMINISTIC)}
_U32_RESULT = frozenset({HELPER_IDS["get_prandom_u32"], HELPER_IDS["get_smp_processor_id"]})

REDIRECTS = ("redirect", "redirect_map", "redirect_peer", "redirect_neigh")
_REDIRECT_IDS = {HELPER_IDS[name] for name in REDIRECTS}
_REDIRECT_MAP = HELPER_IDS["redirect_map"]

# Both are single-entry arrays (direct value access needs one entry): the clock map holds
# one u64 per NONDETERMINISTIC helper; the redirect record is RECORD. Its call count only
# grows, so the runner need not clear it between packets: a packet redirected if the count
# moved.
CLOCK_SIZE = 8 * len(NONDETERMINISTIC)
RECORD = struct.Struct("<5Q")  # calls, helper id, target (ifindex / map tag), key, flags
UNKNOWN_MAP = 0xFFFFFFFF  # map tag stored when the analysis cannot tell the map (then
# the map pointer itself is recorded, in the key field's place: see _record_redirect)


def harness_map_specs() -> dict[str, MapSpec]:
    return {CLOCK_MAP: MapSpec(CLOCK_MAP, MapType.ARRAY, 4, CLOCK_SIZE, 1),
            REDIRECT_MAP: MapSpec(REDIRECT_MAP, MapType.ARRAY, 4, RECORD.size, 1)}


def map_tag(name: str) -> int:
    """A stable number for a map name (the same in every program that names the map)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class Harnessed:
    """A program rewritten for checking, and what the rewrite found."""

    program: Program
    nondeterministic_calls: int
    redirect_calls: int
    map_tags: Mapping[int, str]  # map_tag(name) -> name, for redirect_map targets


def harness(program: Program, prog_type: int = ProgType.XDP) -> Harnessed:
    """Rewrite every nondeterministic and redirect helper call of `program`."""
    edits: dict[int, list[Instruction]] = {}
    nondet = redirects = 0
    tags: dict[int, str] = {}
    states = None
    for index, insn in enumerate(program.insns):
        if not insn.is_helper_call:
            continue
        if insn.imm in _NONDET_IDS:
            edits[index] = _nondeterministic(insn)
            nondet += 1
        elif insn.imm in _REDIRECT_IDS:
            name = None
            if insn.imm == _REDIRECT_MAP:
                if states is None:
                    states = analyze_values(program, prog_type).states
                state = states[index]
                found = map_name(state.regs[1]) if state is not None else "?"
                name = None if found == "?" or found.endswith("[inner]") else found
                if name is not None:
                    tags[map_tag(name)] = name
            edits[index] = _record_redirect(insn, name)
            redirects += 1
    if not edits:
        return Harnessed(program, 0, 0, {})
    return Harnessed(rewrite(program, edits), nondet, redirects, tags)


def _nondeterministic(call: Instruction) -> list[Instruction]:
    # r1-r5 are dead after a helper call (the verifier refuses reads of them), so leaving
    # them untouched is safe; only r0 carries the result.
    slot = _NONDET_IDS[call.imm]
    size = 4 if call.imm in _U32_RESULT else 8
    return [asm.ld_map_value(R0, CLOCK_MAP, 8 * slot, note="check harness"),
            asm.ldx(size, R0, R0, 0, note="check harness")]


def _record_redirect(call: Instruction, map_name_: str | None) -> list[Instruction]:
    # r5 is never an argument of the redirect helpers (they take four at most) and the call
    # clobbers it, so it is free to address the record; r0 is free too (the call sets it).
    # The argument registers are only read. Fields: calls, helper, target, key, flags.
    out = [asm.ld_map_value(R5, REDIRECT_MAP, 0, note="check harness"),
           asm.st(8, R5, 8, call.imm)]
    if call.imm == _REDIRECT_MAP:
        if map_name_ is not None:
            out += [asm.st(8, R5, 16, map_tag(map_name_)), asm.stx(8, R5, 24, R2)]
        else:  # unknown map: record the map pointer itself (root may store pointers)
            out += [asm.st(8, R5, 16, UNKNOWN_MAP), asm.stx(8, R5, 24, R1)]
        out.append(asm.stx(8, R5, 32, R3))
    else:
        flags = R4 if call.imm == HELPER_IDS["redirect_neigh"] else R2
        out += [asm.stx(8, R5, 16, R1), asm.st(8, R5, 24, 0), asm.stx(8, R5, 32, flags)]
    out += [asm.ldx(8, R0, R5, 0), asm.add64(R0, 1), asm.stx(8, R5, 0, R0),
            call.with_label(None)]
    return out


PACKET_STEP_NS = 1_000  # the harness clock advances 1 us per packet


@dataclass(frozen=True)
class Clocks:
    """Where the harness clocks start for one check (read once, shared by both programs)."""

    monotonic_ns: int
    boottime_ns: int
    tai_ns: int
    jiffies: int
    seed: int = 0x9E3779B97F4A7C15

    @classmethod
    def now(cls) -> Clocks:
        import time

        boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        tai = time.clock_gettime_ns(getattr(time, "CLOCK_TAI", time.CLOCK_REALTIME))
        # jiffies_64 starts at INITIAL_JIFFIES (5 minutes before wrapping 32 bits).
        hz = kernel_hz()
        jiffies = ((1 << 32) - 300 * hz + boot * hz // 1_000_000_000) & ((1 << 64) - 1)
        return cls(time.monotonic_ns(), boot, tai, jiffies)

    def values(self, packet: int, cpu: int) -> tuple[int, ...]:
        """Each nondeterministic helper's result during packet `packet` (NONDETERMINISTIC
        order)."""
        step = packet * PACKET_STEP_NS
        return (self.monotonic_ns + step, self.boottime_ns + step,
                self.monotonic_ns + step, self.tai_ns + step, self.jiffies + packet,
                self.random(packet), cpu)

    def random(self, packet: int) -> int:
        # splitmix64 of (seed, packet): well mixed, and invertible knowledge of `packet`
        # is kept by the caller (describe_value searches the packets it ran).
        z = (self.seed + (packet + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
        return (z ^ (z >> 31)) & 0xFFFFFFFF

    def encode(self, packet: int, cpu: int) -> bytes:
        """The clock map's value during packet `packet`."""
        return struct.pack(f"<{len(NONDETERMINISTIC)}Q", *self.values(packet, cpu))

    def describe_value(self, value: int, packets: int) -> str | None:
        """Which helper of which packet (< `packets`) returned `value`, if one did."""
        for name, base, step in (("ktime_get_ns", self.monotonic_ns, PACKET_STEP_NS),
                                 ("ktime_get_boot_ns", self.boottime_ns, PACKET_STEP_NS),
                                 ("ktime_get_tai_ns", self.tai_ns, PACKET_STEP_NS),
                                 ("jiffies64", self.jiffies, 1)):
            offset = value - base
            if 0 <= offset < packets * step and offset % step == 0:
                return f"{name}() of packet #{offset // step}"
        for packet in range(packets):
            if self.random(packet) == value:
                return f"get_prandom_u32() of packet #{packet}"
        return None


def kernel_hz() -> int:
    """CONFIG_HZ of the running kernel (250 when the config is not readable)."""
    import gzip

    try:
        with gzip.open("/proc/config.gz", "rt") as config:
            for line in config:
                if line.startswith("CONFIG_HZ="):
                    return int(line.split("=", 1)[1])
    except (OSError, ValueError):
        pass
    return 250


@dataclass(frozen=True)
class Redirect:
    """The redirect a packet asked for: the last redirect helper call's arguments."""

    helper: str
    target: int  # ifindex (redirect, _peer, _neigh) or the key (redirect_map)
    map: str | None  # redirect_map's map (None for the others, "?" when not identified)
    flags: int
    calls: int

    def describe(self) -> str:
        where = (f"{self.map}[{self.target}]" if self.map is not None
                 else f"ifindex {self.target}")
        return f"bpf_{self.helper}({where}, flags {self.flags:#x})"

    def same_target(self, other: Redirect) -> bool:
        return (self.helper, self.target, self.map, self.flags) == \
            (other.helper, other.target, other.map, other.flags)


def decode_record(value: bytes, tags: Mapping[int, str], calls_before: int = 0
                  ) -> Redirect | None:
    """The redirect record (None when no redirect helper ran since the count was
    `calls_before`)."""
    from ..ir.helpers import HELPER_NAMES

    calls, helper, target, key, flags = RECORD.unpack(value)
    calls -= calls_before
    if calls <= 0:
        return None
    name = HELPER_NAMES[helper] if helper < len(HELPER_NAMES) else f"helper#{helper}"
    if helper == _REDIRECT_MAP:
        if target == UNKNOWN_MAP:
            return Redirect(name, 0, f"?@{key:#x}", flags, calls)
        return Redirect(name, key & 0xFFFFFFFF, tags.get(target, f"map#{target}"), flags,
                        calls)
    return Redirect(name, target & 0xFFFFFFFF, None, flags, calls)
