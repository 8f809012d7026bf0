"""Seeing map writes that bypass the agent, and moving the written map's guard version.

A write made by another process (`bpftool map update`, another loader, a script) does not go
through the agent, so the agent cannot bump the map's version before it. `WriteWatcher`
attaches two small tracing programs, generated here with the IR builder, to the raw
`sys_enter` and `sys_exit` tracepoints:

- at entry, a bpf() call (native or 32-bit) with a write command (update, delete,
  lookup-and-delete and the three batch forms) has its map fd read from the caller's attr;
  the fd is resolved in the calling task's fd table to its struct file, which must be a map
  (its release operation is `bpf_map_release`); the map's id is looked up among the watched
  maps, and if found the map's guard slot is atomically incremented, and the slot is stashed
  under the calling thread's id;
- at exit, the stashed slot is incremented again.

A watched write thus moves the version by exactly 2 (also when the kernel then refuses it),
and the version is odd while the write is in progress (seqlock style): the version moves
before the new value can be seen, so an inlined value checked against the version of its
snapshot is never served once a write has started, and a reader that sees the same even
version before and after reading a map has a consistent copy. A single bump after the write
is not enough: the new value is visible a few hundred nanoseconds before the syscall returns
(a data-plane reader running next to a writer saw it in ~3% of its reads).

Outliving the agent: `WriteWatcher.pin` pins the two links and the watcher's maps (the guard
map is the agent's, pinned by it), so the programs keep bumping versions after the process
that loaded them is gone, by a kill -9 included; `from_pins` takes a pinned watcher over
(a restarted agent adopts it instead of adding a second), and `remove_pins` detaches it
(entry first, exit once the writes in flight are done). No process is exempted from a
pinned watcher: a pid baked into a program that outlives its process could be reused.

Struct offsets (task, files, fdtable, file, file operations, bpf_map, pt_regs) come from the
running kernel's BTF and the address of `bpf_map_release` from /proc/kallsyms, so nothing is
compiled for one kernel build.

Blind spots, by construction: writes made by BPF programs (helpers, stores through value
pointers, BPF_PROG_TYPE_SYSCALL programs), kernel-side changes (LRU eviction, sockmap
removals), stores into mmap-able arrays from user space, maps inside map-in-maps (watch the
inner maps' own ids), an attr on a page that is not resident (the tracer may not fault; such
calls are counted in `WatchCounters.unreadable`), and another thread changing the attr or
the fd table between the tracer's read and the kernel's. The programs read syscall
arguments from x86_64 registers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import os
import platform
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Self

from ..ir import Instruction, Program, asm, encode
from ..ir.asm import FP, R0, R1, R2, R3, R4, R6, R7, R8, R9, Reg
from ..ir.opcodes import AtomicOp, JmpOp
from ..kernel import (
    KernelError,
    Link,
    LoadedProgram,
    Map,
    MapFlags,
    MapType,
    ProgType,
    VerifierError,
    load_program,
)
from ..kernel.tracing import (
    Field,
    KernelFactError,
    KernelLayout,
    attach_raw_tracepoint,
    bpf_syscall_numbers,
    kernel_symbol,
    lockdown_mode,
)
from ..uapi import Cmd

ENTER_PROG = "mph_wr_enter"
EXIT_PROG = "mph_wr_exit"
PROGRAM_NAMES = (ENTER_PROG, EXIT_PROG)

# Names the programs use for their maps (also the kernel-visible map names).
_GUARD = "guard"
_WATCHED = "mph_wr_watched"
_STASH = "mph_wr_stash"
_STATE = "mph_wr_state"

# u64 counters of the state map, by byte offset.
_INFLIGHT = 0  # watched writes between their entry and exit bumps
_OVERFLOW = 8  # writes whose exit could not be prepared (stash full): bumped twice at entry
_UNREADABLE = 16  # write commands whose attr could not be read without faulting: not seen
_STATE_SIZE = 24

# The bpf() commands that change a map's contents, with the offset of map_fd in their attr:
# element commands start with it, batch commands have it after in/out batch, keys, values
# and count.
WRITE_COMMANDS: dict[int, int] = {
    Cmd.MAP_UPDATE_ELEM: 0,
    Cmd.MAP_DELETE_ELEM: 0,
    Cmd.MAP_LOOKUP_AND_DELETE_ELEM: 0,
    Cmd.MAP_LOOKUP_AND_DELETE_BATCH: 36,
    Cmd.MAP_UPDATE_BATCH: 36,
    Cmd.MAP_DELETE_BATCH: 36,
}

_DRAIN_TIMEOUT = 2.0

# Pin names under the directory given to `WriteWatcher.pin`.
PIN_ENTER = "enter"
PIN_EXIT = "exit"
PIN_WATCHED = "watched"
PIN_STATE = "state"
PIN_NAMES = (PIN_WATCHED, PIN_STATE, PIN_EXIT, PIN_ENTER)


class WatchUnavailable(RuntimeError):
    """The kernel will not let us watch map writes; `reason` says why (lockdown, missing BTF,
    hidden kernel addresses, not root...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot watch map writes: {reason}")
        self.reason = reason


class WatchError(RuntimeError):
    """The watcher loaded but did not count writes as it must (selftest failure)."""


class WatchCounters(NamedTuple):
    """What the programs count besides versions."""

    inflight: int  # watched writes between their entry and exit bumps right now
    overflow: int  # watched writes bumped twice at entry (no room to remember them for exit)
    unreadable: int  # write commands whose attr was not resident: their map is unknown, and
    # a write to a watched map among them moved no version (re-snapshot when this grows)


@dataclass(frozen=True, slots=True)
class WatchLayout:
    """Everything the generated programs need to know about the running kernel."""

    bpf_nr: int
    bpf_compat_nr: int | None
    regs_native: tuple[Field, Field]  # pt_regs members holding cmd and attr (di, si)
    regs_compat: tuple[Field, Field] | None  # the same for 32-bit callers (bx, cx)
    task_files: Field
    files_fdt: Field
    fdt_max_fds: Field
    fdt_fd: Field
    file_f_op: Field
    file_private_data: Field
    fops_release: Field
    map_id: Field
    bpf_map_release: int


# Parsing the kernel's BTF for the layout takes 1-3 s here, most of an agent's start: the
# result is kept for the running boot (root only: it holds a kernel address).
LAYOUT_CACHE = Path("/run/morpheus/watch-layout.json")


def _boot_key() -> str:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        btf = Path("/sys/kernel/btf/vmlinux").stat()
    except OSError:
        return ""
    return f"{boot}/{platform.release()}/{btf.st_size}/{btf.st_mtime_ns}"


@functools.cache
def running_layout() -> WatchLayout:
    """The layout of the running kernel (cached in memory, and in LAYOUT_CACHE for the
    running boot). Raises KernelFactError when a fact is missing."""
    key = _boot_key()
    if key:
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            cached = json.loads(LAYOUT_CACHE.read_text())
            if cached["key"] == key:
                return _layout_from_json(cached["layout"])
    layout = _parse_layout()
    if key:
        with contextlib.suppress(OSError):
            LAYOUT_CACHE.parent.mkdir(parents=True, exist_ok=True)
            tmp = LAYOUT_CACHE.with_name(f".{LAYOUT_CACHE.name}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump({"key": key, "layout": dataclasses.asdict(layout)}, out)
            os.replace(tmp, LAYOUT_CACHE)
    return layout


def _layout_from_json(raw: dict[str, object]) -> WatchLayout:
    def field(value: object) -> Field:
        assert isinstance(value, dict)
        return Field(int(value["offset"]), int(value["size"]))

    def pair(value: object) -> tuple[Field, Field] | None:
        if value is None:
            return None
        a, b = value  # type: ignore[misc]
        return field(a), field(b)

    values: dict[str, object] = {}
    for f in dataclasses.fields(WatchLayout):
        value = raw[f.name]
        if f.name in ("bpf_nr", "bpf_map_release"):
            values[f.name] = int(value)  # type: ignore[call-overload]
        elif f.name == "bpf_compat_nr":
            values[f.name] = None if value is None else int(value)  # type: ignore[call-overload]
        elif f.name.startswith("regs_"):
            values[f.name] = pair(value)
        else:
            values[f.name] = field(value)
    if values["regs_native"] is None:
        raise ValueError("no native registers")
    return WatchLayout(**values)  # type: ignore[arg-type]


def _parse_layout() -> WatchLayout:
    machine = platform.machine()
    if machine != "x86_64":
        # pt_regs member names (di, si, bx, cx) and the compat syscall number are x86's.
        raise KernelFactError(f"the watcher knows the syscall registers of x86_64, not {machine}")
    native_nr, compat_nr = bpf_syscall_numbers(machine)
    kernel = KernelLayout.running()
    pointer_fields = {
        "task_files": ("task_struct", "files"),
        "files_fdt": ("files_struct", "fdt"),
        "fdt_fd": ("fdtable", "fd"),
        "file_f_op": ("file", "f_op"),
        "file_private_data": ("file", "private_data"),
        "fops_release": ("file_operations", "release"),
    }
    found = {key: kernel.field(*where) for key, where in pointer_fields.items()}
    for key, (struct_name, member) in pointer_fields.items():
        if found[key].size != 8:
            raise KernelFactError(f"{struct_name}.{member} is not a 64-bit pointer")
    max_fds = kernel.field("fdtable", "max_fds")
    if max_fds.size not in (4, 8):
        raise KernelFactError(f"fdtable.max_fds has an unexpected size {max_fds.size}")
    map_id = kernel.field("bpf_map", "id")
    if map_id.size != 4:
        raise KernelFactError(f"bpf_map.id has an unexpected size {map_id.size}")
    native = (kernel.field("pt_regs", "di"), kernel.field("pt_regs", "si"))
    compat = None
    if compat_nr is not None:
        compat = (kernel.field("pt_regs", "bx"), kernel.field("pt_regs", "cx"))
    return WatchLayout(
        bpf_nr=native_nr,
        bpf_compat_nr=compat_nr,
        regs_native=native,
        regs_compat=compat,
        fdt_max_fds=max_fds,
        map_id=map_id,
        bpf_map_release=kernel_symbol("bpf_map_release"),
        **found,
    )


# --- program generation ----------------------------------------------------------------------

# Stack slots of the entry program.
_SCRATCH = -8  # destination of kernel reads
_KEY32 = -12  # map fd read from the attr, then the map id (key of the watched map)
_PID = -24  # pid_tgid, key of the stash
_SLOT = -28  # slot, value of the stash


def _read_kernel(
    dst: Reg, src: Reg, field: Field, *, nonzero: bool = False, label: str | None = None
) -> list[Instruction]:
    """dst = *(src + field.offset), through bpf_probe_read_kernel (the pointers walked are
    plain numbers to the verifier); leave for "out" if the read fails (or gives 0 with
    `nonzero`). `src` must survive the helper's argument set-up, so it is never R1 or R2."""
    assert src not in (R1, R2)
    insns = [
        asm.mov64(R1, FP, label=label),
        asm.add64(R1, _SCRATCH),
        asm.mov64(R2, field.size),
        asm.mov64(R3, src),
        asm.add64(R3, field.offset),
        asm.call_helper("probe_read_kernel"),
        asm.jne(R0, 0, "out"),
        asm.ldx(field.size, dst, FP, _SCRATCH),
    ]
    if nonzero:
        insns.append(asm.jeq(dst, 0, "out"))
    return insns


def _bump(slot_reg: Reg, amount: int = 1) -> list[Instruction]:
    """Atomically add `amount` to guard slot `slot_reg` (already shifted to a byte offset)."""
    return [
        asm.ld_map_value(R1, _GUARD, 0),
        asm.add64(R1, slot_reg),
        asm.mov64(R2, amount),
        asm.atomic(8, AtomicOp.ADD, R1, 0, R2),
    ]


def _count(offset: int, amount: int) -> list[Instruction]:
    """Atomically add `amount` to the state counter at `offset`."""
    return [
        asm.ld_map_value(R1, _STATE, 0),
        asm.mov64(R2, amount),
        asm.atomic(8, AtomicOp.ADD, R1, offset, R2),
    ]


def enter_program(layout: WatchLayout, slots: int, ignore_tgid: int | None = None) -> Program:
    """The sys_enter program. Registers: R6 pointer being walked, R7 command / fd / slot
    offset, R8 attr address, R9 map_fd offset in the attr / slot."""
    insns: list[Instruction] = [
        # Raw tracepoint ctx: args[0] = struct pt_regs *, args[1] = syscall number.
        asm.ldx(8, R2, R1, 8),
        asm.ldx(8, R6, R1, 0),
        asm.jeq(R2, layout.bpf_nr, "native"),
    ]
    if layout.bpf_compat_nr is not None:
        insns.append(asm.jeq(R2, layout.bpf_compat_nr, "compat"))
    insns.append(asm.ja("out"))
    cmd, attr = layout.regs_native
    insns += [
        *_read_kernel(R7, R6, cmd, label="native"),
        *_read_kernel(R8, R6, attr),
        asm.ja("command"),
    ]
    if layout.regs_compat is not None:
        cmd, attr = layout.regs_compat
        insns += [
            *_read_kernel(R7, R6, cmd, label="compat"),
            *_read_kernel(R8, R6, attr),
            # A 32-bit caller's attr pointer is the low half of the register.
            asm.mov32(R8, R8),
        ]
    # Write commands only, noting where their attr keeps map_fd. cmd is an int: compare the
    # low 32 bits only (the upper half of the register is not part of the argument).
    by_offset: dict[int, list[int]] = {}
    for command, offset in WRITE_COMMANDS.items():
        by_offset.setdefault(offset, []).append(int(command))
    for n, (offset, commands) in enumerate(sorted(by_offset.items())):
        insns.append(asm.mov64(R9, offset, label="command" if n == 0 else None))
        insns += [asm.jeq(R7, c, "fd", wide=False) for c in commands]
    insns.append(asm.ja("out"))
    fd_label: str | None = "fd"
    if ignore_tgid is not None:
        insns += [
            asm.call_helper("get_current_pid_tgid", label=fd_label),
            asm.rsh64(R0, 32),
            asm.jeq(R0, ignore_tgid, "out"),
        ]
        fd_label = None
    insns += [
        # The map fd, from the caller's attr.
        asm.mov64(R1, FP, label=fd_label),
        asm.add64(R1, _KEY32),
        asm.mov64(R2, 4),
        asm.mov64(R3, R8),
        asm.add64(R3, R9),
        asm.call_helper("probe_read_user"),
        asm.jeq(R0, 0, "resolve"),
        # The attr is not resident (this program may not fault it in; the kernel will): the
        # map is unknown and the write goes unseen. Count it, so that user space can tell.
        *_count(_UNREADABLE, 1),
        asm.ja("out"),
        asm.ldx(4, R7, FP, _KEY32, label="resolve"),
        # current->files->fdt; fd < fdt->max_fds; file = fdt->fd[fd]
        asm.call_helper("get_current_task"),
        asm.mov64(R6, R0),
        *_read_kernel(R6, R6, layout.task_files, nonzero=True),
        *_read_kernel(R6, R6, layout.files_fdt, nonzero=True),
        *_read_kernel(R8, R6, layout.fdt_max_fds),
        asm.jmp(JmpOp.JGE, R7, R8, "out"),
        *_read_kernel(R6, R6, layout.fdt_fd, nonzero=True),
        asm.lsh64(R7, 3),
        asm.add64(R6, R7),
        *_read_kernel(R6, R6, Field(0, 8), nonzero=True),
        # Only a map's file has bpf_map_release as its release operation.
        *_read_kernel(R7, R6, layout.file_f_op, nonzero=True),
        *_read_kernel(R7, R7, layout.fops_release),
        asm.ld_imm64(R1, layout.bpf_map_release),
        asm.jne(R7, R1, "out"),
        *_read_kernel(R6, R6, layout.file_private_data, nonzero=True),
        # The map id, straight into the key slot.
        asm.mov64(R1, FP),
        asm.add64(R1, _KEY32),
        asm.mov64(R2, 4),
        asm.mov64(R3, R6),
        asm.add64(R3, layout.map_id.offset),
        asm.call_helper("probe_read_kernel"),
        asm.jne(R0, 0, "out"),
        asm.ld_map_fd(R1, _WATCHED),
        asm.mov64(R2, FP),
        asm.add64(R2, _KEY32),
        asm.call_helper("map_lookup_elem"),
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R9, R0, 0),
        # The bound lets the verifier accept the variable offset into the guard value.
        asm.jmp(JmpOp.JGE, R9, slots, "out"),
        asm.mov64(R7, R9),
        asm.lsh64(R7, 3),
        # Entry bump first: the version is odd before the kernel touches the map.
        *_bump(R7),
        *_count(_INFLIGHT, 1),
        asm.call_helper("get_current_pid_tgid"),
        asm.stx(8, FP, _PID, R0),
        asm.stx(4, FP, _SLOT, R9),
        asm.ld_map_fd(R1, _STASH),
        asm.mov64(R2, FP),
        asm.add64(R2, _PID),
        asm.mov64(R3, FP),
        asm.add64(R3, _SLOT),
        asm.mov64(R4, 0),
        asm.call_helper("map_update_elem"),
        asm.jeq(R0, 0, "out"),
        # No room to remember the write for its exit: complete the bump now. The version
        # has still moved before the write; only the "in progress" parity is lost.
        *_bump(R7),
        *_count(_INFLIGHT, -1),
        *_count(_OVERFLOW, 1),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ]
    return Program(ENTER_PROG, tuple(insns))


def exit_program(slots: int) -> Program:
    """The sys_exit program: complete the bump of a write its thread started."""
    insns: list[Instruction] = [
        # Fast path for every other syscall on the machine: nothing is in flight.
        asm.ld_map_value(R1, _STATE, 0),
        asm.ldx(8, R2, R1, _INFLIGHT),
        asm.jeq(R2, 0, "out"),
        asm.call_helper("get_current_pid_tgid"),
        asm.stx(8, FP, -8, R0),
        asm.ld_map_fd(R1, _STASH),
        asm.mov64(R2, FP),
        asm.add64(R2, -8),
        asm.call_helper("map_lookup_elem"),
        asm.jeq(R0, 0, "out"),
        asm.ldx(4, R6, R0, 0),
        asm.ld_map_fd(R1, _STASH),
        asm.mov64(R2, FP),
        asm.add64(R2, -8),
        asm.call_helper("map_delete_elem"),
        asm.jmp(JmpOp.JGE, R6, slots, "done"),
        asm.lsh64(R6, 3),
        *_bump(R6),
        asm.mov64(R0, 0, label="done"),
        *_count(_INFLIGHT, -1),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ]
    return Program(EXIT_PROG, tuple(insns))


# --- the watcher -----------------------------------------------------------------------------


class WriteWatcher:
    """Bumps a watched map's guard slot by 2 around every bpf() write made to it, by any
    process: +1 at syscall entry (odd: write in progress), +1 at exit.

    `guard` is the single-entry array (key 4 bytes, value 8*n bytes) whose u64 slot `k` is
    the version of the maps watched with slot `k`. `ignore_pid` (a process id) leaves that
    process's writes alone, e.g. the agent's own, which it guards itself.

        with WriteWatcher(guard) as watcher:  # starts
            watcher.watch(routes, slot=0)
            ...
    """

    def __init__(
        self,
        guard: Map,
        *,
        capacity: int = 1024,
        max_inflight: int = 4096,
        ignore_pid: int | None = None,
    ) -> None:
        if (guard.type, guard.key_size, guard.max_entries) != (MapType.ARRAY, 4, 1) or (
            guard.value_size % 8 or not guard.value_size
        ):
            raise ValueError(
                f"guard map {guard.name!r} must be an array with one entry, 4-byte keys and "
                f"a value of 8*n bytes, not {guard!r}"
            )
        if guard.flags & MapFlags.RDONLY_PROG:
            raise ValueError(f"guard map {guard.name!r} is read-only for programs")
        self.guard = guard
        self.slots = guard.value_size // 8
        self.capacity = capacity
        self.max_inflight = max_inflight
        self.ignore_pid = ignore_pid
        self._watched: dict[int, int] = {}  # map id → slot
        self._maps: list[Map] = []
        self._programs: list[LoadedProgram] = []
        self._enter_link: Link | None = None
        self._enter_program: LoadedProgram | None = None
        self._exit_link: Link | None = None
        self._watched_map: Map | None = None
        self._state: Map | None = None
        self._pinned_at: Path | None = None

    @property
    def started(self) -> bool:
        return self._enter_link is not None

    def start(self) -> Self:
        """Generate, load and attach the programs. Raises WatchUnavailable if the kernel
        refuses (lockdown, missing BTF or symbols, no privileges); nothing is left behind."""
        if self.started:
            return self
        try:
            layout = running_layout()
        except KernelFactError as exc:
            raise WatchUnavailable(str(exc)) from None
        try:
            self._create_maps()
            enter = self._load(enter_program(layout, self.slots, self.ignore_pid))
            exit_ = self._load(exit_program(self.slots))
            # Exit first: a write whose entry bump happens must find its exit program.
            self._exit_link = self._attach(exit_, "sys_exit")
            self._enter_link = self._attach(enter, "sys_enter")
            self._enter_program = enter
        except BaseException:
            self._release()
            raise
        return self

    # --- outliving the process ------------------------------------------------------------

    def pin(self, directory: Path, *, after: Callable[[str], None] | None = None) -> None:
        """Pin the watcher under `directory` (on bpffs) so that it keeps bumping versions
        after this process exits, by a crash or a kill included. Maps first and the entry
        link last: a process killed part-way leaves either nothing attached at entry (a
        pinned exit program alone bumps nothing, having nothing in flight) or the whole
        watcher; `from_pins` takes only a complete one and `remove_pins` clears either.
        `after(step)` is called after each step ("maps", "exit", "pinned"; crash tests kill
        the process there)."""
        if not self.started:
            raise ValueError("start the watcher before pinning it")
        assert self._watched_map is not None and self._state is not None
        assert self._exit_link is not None and self._enter_link is not None
        step = after or (lambda _: None)
        directory.mkdir(exist_ok=True)
        self._watched_map.pin(directory / PIN_WATCHED)
        self._state.pin(directory / PIN_STATE)
        step("maps")
        self._exit_link.pin(directory / PIN_EXIT)
        step("exit")
        self._enter_link.pin(directory / PIN_ENTER)
        self._pinned_at = directory
        step("pinned")

    @classmethod
    def from_pins(cls, guard: Map, directory: Path) -> WriteWatcher:
        """Take over a watcher pinned by `pin` (by this process or an earlier one) that
        bumps `guard`; raises WatchError if the pins are incomplete or belong to another
        guard map."""
        if not (directory / PIN_ENTER).exists():
            raise WatchError(f"{directory} holds no complete pinned watcher "
                             f"(no {directory / PIN_ENTER})")
        watcher = cls(guard)
        try:
            watcher._watched_map = Map.from_pin(directory / PIN_WATCHED)
            watcher._watched_map.name = _WATCHED
            watcher._maps.append(watcher._watched_map)
            watcher._state = Map.from_pin(directory / PIN_STATE)
            watcher._state.name = _STATE
            watcher._maps.append(watcher._state)
            watcher._exit_link = Link.from_pin(directory / PIN_EXIT)
            watcher._enter_link = Link.from_pin(directory / PIN_ENTER)
            for link in (watcher._exit_link, watcher._enter_link):
                watcher._programs.append(LoadedProgram.from_id(link.info().prog_id))
            watcher._enter_program = watcher._programs[-1]
            if guard.id not in watcher._programs[-1].info().map_ids:
                raise WatchError(f"the watcher pinned at {directory} bumps another guard map "
                                 f"than {guard.name!r} (id {guard.id})")
            for key, value in watcher._watched_map.items():
                assert isinstance(key, bytes) and isinstance(value, bytes)
                watcher._watched[struct.unpack("<I", key)[0]] = struct.unpack("<I", value)[0]
        except BaseException:
            watcher._pinned_at = None
            watcher._forget()
            raise
        watcher._pinned_at = directory
        return watcher

    @staticmethod
    def remove_pins(directory: Path) -> list[Path]:
        """Unpin a watcher pinned at `directory` (complete or left half-pinned by a killed
        process): entry first, and the exit program only once the writes in flight have
        finished, so that no version is left odd. Removes only the watcher's own pin names;
        returns the pins removed."""
        removed: list[Path] = []
        enter = directory / PIN_ENTER
        state: Map | None = None
        with contextlib.suppress(KernelError):
            if (directory / PIN_STATE).exists():
                state = Map.from_pin(directory / PIN_STATE)
        try:
            if enter.exists():
                prog_id = None
                with contextlib.suppress(KernelError), Link.from_pin(enter) as link:
                    prog_id = link.info().prog_id
                enter.unlink()
                removed.append(enter)
                if prog_id is not None:
                    _wait_gone([prog_id], [])
                deadline = time.monotonic() + _DRAIN_TIMEOUT
                while state is not None and time.monotonic() < deadline:
                    raw = state.lookup(0)
                    if not isinstance(raw, bytes) or not struct.unpack_from("<Q", raw)[0]:
                        break
                    time.sleep(0.001)
        finally:
            if state is not None:
                state.close()
        gone: list[int] = []
        if (directory / PIN_EXIT).exists():
            with contextlib.suppress(KernelError), Link.from_pin(directory / PIN_EXIT) as link:
                gone.append(link.info().prog_id)
        for name in (PIN_EXIT, PIN_WATCHED, PIN_STATE):
            path = directory / name
            if path.exists():
                path.unlink()
                removed.append(path)
        # As close(): once this returns, nothing of the watcher is left in the kernel.
        _wait_gone(gone, [])
        return removed

    @property
    def pinned(self) -> bool:
        return self._pinned_at is not None

    def _forget(self) -> None:
        """Close our fds without waiting for the kernel objects to go (pinned: they stay)."""
        for link in (self._enter_link, self._exit_link):
            if link is not None:
                link.close()
        self._enter_link = self._exit_link = self._enter_program = None
        for program in self._programs:
            program.close()
        for m in self._maps:
            m.close()
        self._programs.clear()
        self._maps.clear()
        self._watched_map = self._state = None

    def _create_maps(self) -> None:
        watched = Map.create(MapType.HASH, 4, 4, self.capacity, name=_WATCHED)
        self._maps.append(watched)
        self._watched_map = watched
        self._maps.append(Map.create(MapType.HASH, 8, 4, self.max_inflight, name=_STASH))
        self._state = Map.create(MapType.ARRAY, 4, _STATE_SIZE, 1, name=_STATE)
        self._maps.append(self._state)
        for map_id, slot in self._watched.items():
            watched.update(struct.pack("<I", map_id), struct.pack("<I", slot))

    def _load(self, program: Program) -> LoadedProgram:
        fds = {m.name: m.fd.number for m in self._maps}
        fds[_GUARD] = self.guard.fd.number
        code = encode(program, fds).bytecode
        try:
            loaded = load_program(code, ProgType.RAW_TRACEPOINT, name=program.name)
        except VerifierError as exc:
            if "unknown func" in exc.log or exc.errno == errno.EPERM:
                raise WatchUnavailable(_refusal(f"the kernel refused {program.name}", exc)) from exc
            raise
        except KernelError as exc:
            raise WatchUnavailable(_refusal(f"cannot load {program.name}", exc)) from exc
        self._programs.append(loaded)
        return loaded

    def _attach(self, program: LoadedProgram, tracepoint: str) -> Link:
        try:
            return attach_raw_tracepoint(program, tracepoint)
        except KernelError as exc:
            raise WatchUnavailable(_refusal(f"cannot attach to {tracepoint}", exc)) from exc

    # --- watched maps ------------------------------------------------------------------------

    def watch(self, map: Map | int, slot: int) -> None:
        """Bump guard slot `slot` around every write to `map` (a Map or a map id) from now on."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"guard slot {slot} out of range (0..{self.slots - 1})")
        map_id = map if isinstance(map, int) else map.id
        if map_id not in self._watched and len(self._watched) >= self.capacity:
            raise ValueError(f"already watching {self.capacity} maps (the capacity)")
        self._watched[map_id] = slot
        if self._watched_map is not None:
            self._watched_map.update(struct.pack("<I", map_id), struct.pack("<I", slot))

    def unwatch(self, map: Map | int) -> None:
        """Stop bumping for writes to `map`; a write already in progress still gets its
        exit bump."""
        map_id = map if isinstance(map, int) else map.id
        if self._watched.pop(map_id, None) is not None and self._watched_map is not None:
            self._watched_map.delete(struct.pack("<I", map_id))

    @property
    def watched(self) -> dict[int, int]:
        """Map id → guard slot of the watched maps."""
        return dict(self._watched)

    def version(self, slot: int) -> int:
        """The current value of guard slot `slot`."""
        raw = self.guard.lookup(0)
        assert isinstance(raw, bytes)
        return int.from_bytes(raw[8 * slot : 8 * slot + 8], "little")

    def counters(self) -> WatchCounters:
        """The watcher's own counters (zeros when not started)."""
        if self._state is None:
            return WatchCounters(0, 0, 0)
        raw = self._state.lookup(0)
        assert isinstance(raw, bytes)
        return WatchCounters(*struct.unpack_from("<QQQ", raw, 0))

    def objects(self) -> dict[str, list[int]]:
        """Kernel ids of what the watcher holds: "programs", "links", "maps" (for status
        reports, and for checking that nothing is left after `close()`)."""
        links = [link for link in (self._exit_link, self._enter_link) if link is not None]
        return {
            "programs": [p.id for p in self._programs],
            "links": [link.info().id for link in links],
            "maps": [m.id for m in self._maps],
        }

    # --- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Detach and close everything. Entry is detached first and exit only once the
        writes in flight have finished, so that no version is left odd. A pinned watcher
        stays attached: only this process's fds are closed (`remove_pins` first to
        detach it)."""
        if self._pinned_at is not None:
            if (self._pinned_at / PIN_ENTER).exists():
                self._forget()
                return
            self._pinned_at = None
        if self._enter_link is not None and self._enter_program is not None:
            enter_id = self._enter_program.id
            self._enter_link.close()
            self._enter_link = None
            self._enter_program.close()
            # A run of the entry program that began before the detach can still bump; its
            # program is freed only after the grace period that ends every such run.
            _wait_gone([enter_id], [])
            deadline = time.monotonic() + _DRAIN_TIMEOUT
            while self.counters().inflight and time.monotonic() < deadline:
                time.sleep(0.001)
        self._release()

    def _release(self) -> None:
        program_ids = [p.id for p in self._programs if not p.fd.closed]
        map_ids = [m.id for m in self._maps]
        self._forget()
        # A raw tracepoint link lets go of its program only after an RCU grace period, and
        # the program of its maps after that: wait, so that once close() returns nothing of
        # the watcher is left in the kernel.
        _wait_gone(program_ids, map_ids)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "attached" if self.started else "detached"
        return f"WriteWatcher({state}, {len(self._watched)} maps, {self.slots} slots)"


def _wait_gone(program_ids: list[int], map_ids: list[int], timeout: float = 2.0) -> None:
    def alive(opener: Callable[[int], LoadedProgram | Map], object_id: int) -> bool:
        try:
            opener(object_id).close()
        except KernelError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    deadline = time.monotonic() + timeout
    pending: list[tuple[Callable[[int], LoadedProgram | Map], int]] = [
        (LoadedProgram.from_id, i) for i in program_ids
    ]
    pending += [(Map.from_id, i) for i in map_ids]
    while pending and time.monotonic() < deadline:
        pending = [(opener, i) for opener, i in pending if alive(opener, i)]
        if pending:
            time.sleep(0.002)


def _refusal(what: str, exc: KernelError) -> str:
    mode = lockdown_mode()
    lockdown = f" (kernel lockdown: {mode})" if mode not in (None, "none") else ""
    return f"{what}{lockdown}: {exc}"


# --- self test and cost ----------------------------------------------------------------------


def selftest() -> None:
    """Prove on scratch maps that the watcher works on this kernel: an update and a delete
    of a watched map move its slot by exactly 2 each; a lookup and a write to an unwatched
    map move nothing. Raises WatchUnavailable or WatchError."""
    guard = Map.create(MapType.ARRAY, 4, 16, 1, name="mph_wr_tguard")
    watched = Map.create(MapType.HASH, 4, 8, 4, name="mph_wr_tmap")
    other = Map.create(MapType.HASH, 4, 8, 4, name="mph_wr_tother")
    try:
        with WriteWatcher(guard) as watcher:
            watcher.watch(watched, 1)
            steps: list[tuple[str, int]] = []
            watched.update(1, bytes(8))
            steps.append(("update", 2))
            watched.lookup(1)
            steps.append(("lookup", 2))
            other.update(1, bytes(8))
            steps.append(("unwatched update", 2))
            watched.delete(1)
            steps.append(("delete", 4))
            seen = watcher.version(1)
            if seen != steps[-1][1] or watcher.version(0) != 0:
                raise WatchError(
                    f"after {[s for s, _ in steps]} the watched slot is {seen} (expected "
                    f"{steps[-1][1]}) and the unused slot {watcher.version(0)} (expected 0)"
                )
    finally:
        for m in (guard, watched, other):
            m.close()


@dataclass(frozen=True, slots=True)
class Overhead:
    """Costs of the watcher in nanoseconds per call, from rounds that alternate between
    attached and detached in one process. Deltas are per-round differences, summarized as
    (min, median, max); absolute times are medians."""

    write_detached_ns: float  # Map.update, no watcher attached
    write_watched_ns: float  # Map.update on a watched map
    write_unwatched_ns: float  # Map.update on another map, watcher attached
    syscall_detached_ns: float  # os.getppid(), no watcher attached
    syscall_attached_ns: float  # os.getppid(), watcher attached
    watched_write_delta: tuple[float, float, float]
    unwatched_write_delta: tuple[float, float, float]
    syscall_delta: tuple[float, float, float]
    other_tracers: int  # raw tracepoint links of others on sys_enter/sys_exit meanwhile

    @property
    def per_watched_write_ns(self) -> float:
        return self.watched_write_delta[1]

    @property
    def per_syscall_ns(self) -> float:
        return self.syscall_delta[1]

    def __str__(self) -> str:
        def spread(d: tuple[float, float, float]) -> str:
            return f"+{d[1]:.0f} ns (min {d[0]:.0f}, max {d[2]:.0f})"

        text = (
            f"watched write {spread(self.watched_write_delta)} over "
            f"{self.write_detached_ns:.0f} ns/update; write to an unwatched map "
            f"{spread(self.unwatched_write_delta)}; unrelated syscall "
            f"{spread(self.syscall_delta)} over {self.syscall_detached_ns:.0f} ns/getppid"
        )
        if self.other_tracers:
            text += f" ({self.other_tracers} other sys_enter/sys_exit tracers were attached)"
        return text


def measure_overhead(writes: int = 10_000, syscalls: int = 200_000, rounds: int = 10) -> Overhead:
    """Time map updates and an unrelated syscall (getppid) with and without the watcher,
    alternating round by round in this process (`writes` and `syscalls` calls in all)."""
    import os
    import statistics

    from ..kernel.tracing import raw_tracepoint_attachments

    guard = Map.create(MapType.ARRAY, 4, 8, 1, name="mph_wr_bguard")
    watched = Map.create(MapType.ARRAY, 4, 8, 1, name="mph_wr_bmap")
    other = Map.create(MapType.ARRAY, 4, 8, 1, name="mph_wr_bother")
    value = bytes(8)
    per_round_writes = max(1, writes // rounds)
    per_round_calls = max(1, syscalls // rounds)
    keys = ("wd", "ww", "wu", "sd", "sa")
    samples: dict[str, list[float]] = {k: [] for k in keys}
    others: set[int] = set()

    def time_updates(m: Map) -> float:
        update = m.update
        start = time.perf_counter_ns()
        for _ in range(per_round_writes):
            update(0, value)
        return (time.perf_counter_ns() - start) / per_round_writes

    def time_getppid() -> float:
        getppid = os.getppid
        start = time.perf_counter_ns()
        for _ in range(per_round_calls):
            getppid()
        return (time.perf_counter_ns() - start) / per_round_calls

    def note_other_tracers(ours: list[int]) -> None:
        for link in raw_tracepoint_attachments():
            if link.tracepoint in ("sys_enter", "sys_exit") and link.prog_id not in ours:
                others.add(link.link_id)

    watcher = WriteWatcher(guard)
    try:
        watcher.watch(watched, 0)
        for _ in range(rounds):
            samples["wd"].append(time_updates(watched))
            samples["sd"].append(time_getppid())
            watcher.start()
            samples["ww"].append(time_updates(watched))
            samples["wu"].append(time_updates(other))
            samples["sa"].append(time_getppid())
            note_other_tracers(watcher.objects()["programs"])
            watcher.close()
    finally:
        watcher.close()
        for m in (guard, watched, other):
            m.close()

    def delta(attached: str, detached: str) -> tuple[float, float, float]:
        d = [a - b for a, b in zip(samples[attached], samples[detached], strict=True)]
        return min(d), statistics.median(d), max(d)

    med = {k: statistics.median(v) for k, v in samples.items()}
    return Overhead(
        write_detached_ns=med["wd"],
        write_watched_ns=med["ww"],
        write_unwatched_ns=med["wu"],
        syscall_detached_ns=med["sd"],
        syscall_attached_ns=med["sa"],
        watched_write_delta=delta("ww", "wd"),
        unwatched_write_delta=delta("wu", "wd"),
        syscall_delta=delta("sa", "sd"),
        other_tracers=len(others),
    )


__all__ = [
    "ENTER_PROG",
    "EXIT_PROG",
    "PIN_NAMES",
    "PROGRAM_NAMES",
    "WRITE_COMMANDS",
    "Overhead",
    "WatchCounters",
    "WatchError",
    "WatchLayout",
    "WatchUnavailable",
    "WriteWatcher",
    "enter_program",
    "exit_program",
    "measure_overhead",
    "running_layout",
    "selftest",
]
