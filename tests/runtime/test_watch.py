"""The write watcher: writes that bypass the agent move the written map's guard version.

Writers are other processes (bpftool, a Python child using morpheus.kernel), this process,
and a 32-bit caller (int 0x80 from this process). Every watched write must move its slot by
exactly 2, with the first bump before the write is visible; reads and writes to other maps
move nothing; after close() nothing of the watcher is left in the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import os
import pathlib
import struct
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from morpheus.ir import Instruction, Program, asm, encode
from morpheus.ir.asm import R0, R1, R2, R3, R4, R5, R6, R7, R8
from morpheus.ir.opcodes import AluOp, AtomicOp, JmpOp
from morpheus.kernel import (
    KernelError,
    LoadedProgram,
    Map,
    MapFlags,
    MapType,
    ProgType,
    load_program,
)
from morpheus.kernel.syscall import Attr, bpf, buffer
from morpheus.kernel.tracing import Field, KernelFactError, bpf_syscall_numbers
from morpheus.runtime import watch
from morpheus.runtime.watch import (
    PROGRAM_NAMES,
    WatchError,
    WatchLayout,
    WatchUnavailable,
    WriteWatcher,
    enter_program,
    exit_program,
)
from morpheus.uapi import Cmd

pytestmark = pytest.mark.kernel

SLOTS = 4
SLOT = 1  # the target map's slot; the others must never move


@contextlib.contextmanager
def scratch_maps() -> Iterator[tuple[Map, Map, Map]]:
    """A guard with SLOTS slots, a hash map to watch and another one."""
    with (
        Map.create(MapType.ARRAY, 4, 8 * SLOTS, 1, name="mph_t_guard") as guard,
        Map.create(MapType.HASH, 4, 8, 16, name="mph_t_target") as target,
        Map.create(MapType.HASH, 4, 8, 16, name="mph_t_other") as other,
    ):
        yield guard, target, other


@pytest.fixture
def maps() -> Iterator[tuple[Map, Map, Map]]:
    with scratch_maps() as made:
        yield made


@pytest.fixture(scope="class")
def shared() -> Iterator[tuple[WriteWatcher, Map, Map, Map]]:
    """One watcher for a class of tests (closing one waits for two RCU grace periods):
    (watcher, guard, target watched with SLOT, other)."""
    with scratch_maps() as (guard, target, other), WriteWatcher(guard) as w:
        w.watch(target, SLOT)
        yield w, guard, target, other


def versions(guard: Map) -> list[int]:
    raw = guard.lookup(0)
    assert isinstance(raw, bytes)
    return list(struct.unpack(f"<{SLOTS}Q", raw))


def moved(before: list[int], after: list[int]) -> dict[int, int]:
    return {slot: a - b for slot, (b, a) in enumerate(zip(before, after, strict=True)) if a != b}


def bpftool(*args: str) -> str:
    return subprocess.run(["bpftool", *args], check=True, capture_output=True, text=True).stdout


def hexbytes(data: bytes) -> list[str]:
    return ["hex", *(f"{b:02x}" for b in data)]


def child(code: str, *args: object) -> str:
    """Run `code` in a fresh Python process (morpheus importable), return its stdout."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


Shared = tuple[WriteWatcher, Map, Map, Map]

CHILD_OPS = {
    "update": "m.update(5, bytes(8))",
    "delete": "m.delete(1)",
    "lookup_and_delete": "m.lookup_and_delete(1)",
    "update_batch": "m.update_batch([(5, bytes(8)), (6, bytes(8))])",
    "delete_batch": "m.delete_batch([1, 2])",
    "lookup_and_delete_batch": "list(m.lookup_batch(delete=True))",
}

# push rbx; mov eax, 357 (ia32 bpf); mov ebx, edi; mov ecx, esi; int 0x80; pop rbx; ret
# (edx, the third argument, already holds the attr size.)
_INT80_BPF = bytes.fromhex("53 b8 65 01 00 00 89 fb 89 f1 cd 80 5b c3")
_MAP_32BIT = 0x40


@contextlib.contextmanager
def int80_bpf() -> Iterator[tuple[Callable[[int, int, int], int], mmap.mmap, int]]:
    """A function calling bpf() the way a 32-bit program does, and memory below 4 GiB for
    its attr (a 32-bit caller passes a 32-bit pointer)."""
    mem = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_32BIT,
                    prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    mem[: len(_INT80_BPF)] = _INT80_BPF
    anchor = ctypes.c_char.from_buffer(mem)
    base = ctypes.addressof(anchor)
    assert base < 1 << 32
    function = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint)(base)
    try:
        yield function, mem, base
    finally:
        del function, anchor
        mem.close()


WRITER = """
    import os, struct, sys
    from morpheus.kernel import Map
    os.sched_setaffinity(0, {int(sys.argv[3])})
    m = Map.from_id(int(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    for i in range(1, int(sys.argv[2]) + 1):
        m.update(0, struct.pack("<Q", i))
    """


READ_COUNTERS = ("base", "samples", "late", "torn", "in_progress", "new_while_odd")


@contextlib.contextmanager
def load_reader(guard: Map, array: Map, reads: Map, slot: int) -> Iterator[LoadedProgram]:
    """A program reading version, value, version with direct loads, like specialized code,
    and counting in `reads` (see READ_COUNTERS; "base" is the version before the writes):

    - late: the value of write x is visible but the version is below 2x-1 (no entry bump yet);
    - torn: equal even versions around the read, but the value is not version/2;
    - in_progress: equal odd versions (a write between its entry and exit bumps);
    - new_while_odd: among those, the write's value is already visible: a bump made only at
      exit would have let this read pass as stable with the new value and the old version.

    A tc program: its test runs have no per-call RCU wait, unlike unattached XDP programs.
    """

    def count(name: str, label: str | None = None) -> list[Instruction]:
        offset = 8 * READ_COUNTERS.index(name)
        return [asm.mov64(R5, 1, label=label), asm.atomic(8, AtomicOp.ADD, R8, offset, R5)]

    program = Program("mph_t_reader", (
        asm.ld_map_value(R6, "guard", 8 * slot),
        asm.ld_map_value(R7, "array", 0),
        asm.ld_map_value(R8, "reads", 0),
        asm.ldx(8, R1, R6, 0),  # v1
        asm.ldx(8, R2, R7, 0),  # x
        asm.ldx(8, R3, R6, 0),  # v2
        asm.ldx(8, R4, R8, 0),  # base
        asm.alu64(AluOp.SUB, R1, R4),
        asm.alu64(AluOp.SUB, R3, R4),
        asm.lsh64(R2, 1),  # 2x
        *count("samples"),
        asm.mov64(R0, R3),
        asm.add64(R0, 1),
        asm.jmp(JmpOp.JGE, R0, R2, "stable?"),
        *count("late"),
        asm.jne(R1, R3, "out", label="stable?"),
        asm.jmp(JmpOp.JSET, R1, 1, "odd"),
        asm.jeq(R1, R2, "out"),
        *count("torn"),
        asm.ja("out"),
        *count("in_progress", label="odd"),
        asm.mov64(R4, R1),
        asm.add64(R4, 1),
        asm.jne(R2, R4, "out"),
        *count("new_while_odd"),
        asm.mov64(R0, 0, label="out"),
        asm.exit_(),
    ))
    fds = {"guard": guard.fd.number, "array": array.fd.number, "reads": reads.fd.number}
    code = encode(program, fds).bytecode
    with load_program(code, ProgType.SCHED_CLS, name="mph_t_reader") as loaded:
        yield loaded


@contextlib.contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """Run this process on `cpu` inside the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class TestWrites:
    """Writers of every kind against one watcher; each test checks the versions it moves."""

    def test_bpftool_update_and_delete_bump_by_two(self, shared: Shared) -> None:
        _, guard, target, _ = shared
        key = hexbytes(struct.pack("<I", 7))
        before = versions(guard)
        bpftool("map", "update", "id", str(target.id), "key", *key,
                "value", *hexbytes(struct.pack("<Q", 42)))
        assert target.lookup(7) == struct.pack("<Q", 42)
        assert moved(before, versions(guard)) == {SLOT: 2}
        before = versions(guard)
        bpftool("map", "delete", "id", str(target.id), "key", *key)
        assert target.lookup(7) is None
        assert moved(before, versions(guard)) == {SLOT: 2}

    def test_bpftool_write_to_unwatched_map_bumps_nothing(self, shared: Shared) -> None:
        _, guard, _, other = shared
        before = versions(guard)
        bpftool("map", "update", "id", str(other.id), "key", *hexbytes(struct.pack("<I", 7)),
                "value", *hexbytes(bytes(8)))
        assert versions(guard) == before

    @pytest.mark.parametrize("op", CHILD_OPS)
    def test_python_child_write_bumps_by_two(self, op: str, shared: Shared) -> None:
        """Each of the six write commands, made once by another process through
        Map.from_id(...), moves the slot by exactly 2 (one bpf() call: entry and exit)."""
        _, guard, target, _ = shared
        target.clear()
        target.update(1, bytes(8))
        target.update(2, bytes(8))
        before = versions(guard)
        child(f"""
            import sys
            from morpheus.kernel import Map
            m = Map.from_id(int(sys.argv[1]))
            {CHILD_OPS[op]}
            """, target.id)
        assert moved(before, versions(guard)) == {SLOT: 2}

    def test_python_child_reads_and_other_maps_bump_nothing(self, shared: Shared) -> None:
        _, guard, target, other = shared
        target.update(1, bytes(8))
        before = versions(guard)
        child("""
            import sys
            from morpheus.kernel import Map
            m, o = Map.from_id(int(sys.argv[1])), Map.from_id(int(sys.argv[2]))
            m.lookup(1), m.lookup(2), list(m.keys()), list(m.lookup_batch()), m.info
            o.update(1, bytes(8)); o.delete(1); o.update_batch([(2, bytes(8))])
            """, target.id, other.id)
        assert versions(guard) == before

    def test_reads_in_this_process_do_not_bump(self, shared: Shared) -> None:
        _, guard, target, _ = shared
        target.update(1, bytes(8))
        before = versions(guard)
        for _ in range(100):
            target.lookup(1)
            target.next_key(None)
        list(target.lookup_batch())
        assert versions(guard) == before

    def test_fds_that_are_not_maps_bump_nothing(self, shared: Shared) -> None:
        """The fd in the attr may be anything: a regular file, a number past the fd table,
        a negative one. The tracer must neither count it nor fail."""
        _, guard, _, _ = shared
        key, value = buffer(4), buffer(8)
        before = versions(guard)
        with open(__file__, "rb") as f:
            for fd in (f.fileno(), 1 << 20, -1, 0x7FFFFFF0):
                attr = Attr().u32(0, fd).pointer(8, key).pointer(16, value)
                with pytest.raises(KernelError):
                    bpf(Cmd.MAP_UPDATE_ELEM, attr, "update through a bad fd")
        assert versions(guard) == before

    def test_32bit_caller_is_caught(self, shared: Shared) -> None:
        _, guard, target, _ = shared
        with int80_bpf() as (call, mem, base):
            attr, key, value = 1024, 2048, 2056
            mem[key : key + 4] = struct.pack("<I", 3)
            mem[value : value + 8] = struct.pack("<Q", 99)
            struct.pack_into("<IIQQQ", mem, attr, target.fd.number, 0, base + key,
                             base + value, 0)
            before = versions(guard)
            ret = call(int(Cmd.MAP_UPDATE_ELEM), base + attr, 32)
            assert ret == 0, f"int 0x80 bpf() failed: {os.strerror(-ret)}"
            assert target.lookup(3) == struct.pack("<Q", 99)
            assert moved(before, versions(guard)) == {SLOT: 2}
            before = versions(guard)
            assert call(int(Cmd.MAP_LOOKUP_ELEM), base + attr, 32) == 0
            assert versions(guard) == before

    def test_version_moves_before_the_write_is_visible(self, shared: Shared) -> None:
        """A child writes 1, 2, ..., n into a watched single-entry array as fast as it can
        on one CPU, while a BPF program on another reads version, value, version (see
        `load_reader`). Write i makes the version 2i-1 at entry and 2i at exit: no read may
        see a value before its entry bump, nor a changed value between equal even versions."""
        watcher, guard, _, _ = shared
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            pytest.skip("a concurrent reader and writer need two CPUs")
        writes, slot = 30_000, 2
        with (
            Map.create(MapType.ARRAY, 4, 8, 1, name="mph_t_array") as array,
            Map.create(MapType.ARRAY, 4, 8 * len(READ_COUNTERS), 1, name="mph_t_reads") as reads,
        ):
            watcher.watch(array, slot)
            try:
                base = watcher.version(slot)
                reads.update(0, struct.pack("<Q", base) + bytes(8 * (len(READ_COUNTERS) - 1)))
                with load_reader(guard, array, reads, slot) as reader, pinned(cpus[0]):
                    proc = subprocess.Popen(
                        [sys.executable, "-c", textwrap.dedent(WRITER), str(array.id),
                         str(writes), str(cpus[1])],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    assert proc.stdout is not None and proc.stdin is not None
                    assert proc.stdout.readline().strip() == "ready"
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    while proc.poll() is None:
                        reader.test_run(bytes(64), repeat=100_000)
                    assert proc.wait() == 0
            finally:
                watcher.unwatch(array)
            raw = reads.lookup(0)
            assert isinstance(raw, bytes)
            counts = dict(zip(READ_COUNTERS, struct.unpack(f"<{len(READ_COUNTERS)}Q", raw),
                              strict=True))
            assert watcher.version(slot) - base == 2 * writes, "one bump pair per write"
        assert counts["late"] == 0, f"values visible before their entry bump: {counts}"
        assert counts["torn"] == 0, f"stable versions around a changed value: {counts}"
        # The reads ran concurrently with the writes, and saw the window that a bump only
        # at exit leaves open: the new value visible before the write's syscall returned.
        assert counts["new_while_odd"] > 0, counts
        print(f"\nconcurrent reads: {counts}")


# --- watchers of their own -------------------------------------------------------------------


def test_writes_in_this_process_bump_unless_ignored(maps: tuple[Map, Map, Map]) -> None:
    guard, target, _ = maps
    with WriteWatcher(guard) as w:
        w.watch(target, SLOT)
        before = versions(guard)
        for n in range(10):
            target.update(n, bytes(8))
        assert moved(before, versions(guard)) == {SLOT: 20}
    with WriteWatcher(guard, ignore_pid=os.getpid()) as w:
        w.watch(target, SLOT)
        before = versions(guard)
        target.update(1, bytes(8))
        assert versions(guard) == before
        child("""
            import sys
            from morpheus.kernel import Map
            Map.from_id(int(sys.argv[1])).update(1, bytes(8))
            """, target.id)
        assert moved(before, versions(guard)) == {SLOT: 2}


def test_watch_before_start_by_id_and_unwatch(maps: tuple[Map, Map, Map]) -> None:
    guard, target, other = maps
    w = WriteWatcher(guard)
    w.watch(target, SLOT)  # before start: applied when the programs are loaded
    with w:
        w.watch(other.id, 3)
        before = versions(guard)
        other.update(1, bytes(8))
        target.update(1, bytes(8))
        assert moved(before, versions(guard)) == {SLOT: 2, 3: 2}
        w.unwatch(other)
        w.unwatch(target)
        before = versions(guard)
        other.update(1, bytes(8))
        target.update(1, bytes(8))
        assert versions(guard) == before
        assert w.watched == {}
        with pytest.raises(IndexError):
            w.watch(target, SLOTS)


def test_close_leaves_nothing(maps: tuple[Map, Map, Map]) -> None:
    guard, target, _ = maps
    w = WriteWatcher(guard).start()
    w.watch(target, SLOT)
    held = w.objects()
    assert len(held["programs"]) == 2 and len(held["links"]) == 2
    progs = {p["id"]: p["name"] for p in json.loads(bpftool("-j", "prog", "show"))}
    assert {progs[i] for i in held["programs"]} == set(PROGRAM_NAMES)
    target.update(1, bytes(8))
    w.close()
    w.close()  # idempotent
    # By id: other watchers (the agent's, in tests running alongside) share the names.
    progs = {p["id"]: p["name"] for p in json.loads(bpftool("-j", "prog", "show"))}
    links = {k["id"] for k in json.loads(bpftool("-j", "link", "show"))}
    maps_left = {m["id"] for m in json.loads(bpftool("-j", "map", "show"))}
    assert not set(held["programs"]) & set(progs), "watcher programs are still loaded"
    assert not set(held["links"]) & links, "watcher links are still attached"
    assert not set(held["maps"]) & maps_left, "watcher maps still exist"
    assert w.objects() == {"programs": [], "links": [], "maps": []}
    before = versions(guard)
    assert before[SLOT] == 2 and all(v % 2 == 0 for v in before), "a version was left odd"
    target.update(1, bytes(8))
    assert versions(guard) == before


def test_a_pinned_watcher_outlives_its_process_and_is_taken_over(
        maps: tuple[Map, Map, Map]) -> None:
    guard, target, _ = maps
    directory = pathlib.Path(f"/sys/fs/bpf/mph-watch-test-{os.getpid()}")
    directory.mkdir()
    try:
        w = WriteWatcher(guard).start()
        w.watch(target, SLOT)
        w.pin(directory)
        held = w.objects()
        w.close()  # pinned: only our fds go
        # A process that never knew the watcher writes: the pins keep it bumping.
        before = versions(guard)
        child("""
            import sys
            from morpheus.kernel import Map
            Map.from_id(int(sys.argv[1])).update(1, bytes(8))
            """, target.id)
        assert moved(before, versions(guard)) == {SLOT: 2}
        again = WriteWatcher.from_pins(guard, directory)
        assert again.pinned and again.watched == {target.id: SLOT}
        assert sorted(again.objects()["programs"]) == sorted(held["programs"])  # not a second
        again.close()
        with Map.create(MapType.ARRAY, 4, 8 * SLOTS, 1, name="mph_t_other") as other, \
                pytest.raises(WatchError, match="another guard map"):
            WriteWatcher.from_pins(other, directory)
        removed = WriteWatcher.remove_pins(directory)
        assert sorted(p.name for p in removed) == sorted(watch.PIN_NAMES)
        progs = {p["id"] for p in json.loads(bpftool("-j", "prog", "show"))}
        assert not set(held["programs"]) & progs, "watcher programs are still loaded"
        before = versions(guard)
        target.update(1, bytes(8))
        assert versions(guard) == before and all(v % 2 == 0 for v in before)
    finally:
        subprocess.run(["rm", "-rf", str(directory)], check=False)


def test_start_failure_leaves_nothing(maps: tuple[Map, Map, Map],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> WatchLayout:
        raise KernelFactError("kernel symbol 'bpf_map_release' is not in /proc/kallsyms")

    monkeypatch.setattr(watch, "running_layout", missing)
    w = WriteWatcher(maps[0])
    with pytest.raises(WatchUnavailable, match="bpf_map_release"):
        w.start()
    assert not w.started and w.objects() == {"programs": [], "links": [], "maps": []}


def test_guard_shape_is_checked() -> None:
    with Map.create(MapType.ARRAY, 4, 8, 2, name="mph_t_bad") as bad, pytest.raises(ValueError):
        WriteWatcher(bad)


def test_selftest() -> None:
    watch.selftest()


# --- pure: the programs come from the layout -------------------------------------------------


def test_programs_use_the_layout_not_constants() -> None:
    """Offsets, syscall numbers and the symbol address come from the layout: change them and
    the generated code changes with them."""
    fields = dict(
        regs_native=(Field(112, 8), Field(104, 8)), regs_compat=(Field(40, 8), Field(88, 8)),
        task_files=Field(1824, 8), files_fdt=Field(32, 8), fdt_max_fds=Field(0, 4),
        fdt_fd=Field(8, 8), file_f_op=Field(8, 8), file_private_data=Field(24, 8),
        fops_release=Field(120, 8), map_id=Field(92, 4),
    )
    a = WatchLayout(bpf_nr=321, bpf_compat_nr=357, bpf_map_release=0xFFFFFFFF814E5F00, **fields)
    moved_fields = {**fields, "task_files": Field(2000, 8), "map_id": Field(60, 4),
                    "regs_compat": None}
    b = WatchLayout(bpf_nr=321, bpf_compat_nr=None, bpf_map_release=0xFFFFFFFF81000000,
                    **moved_fields)
    fds = {"guard": 3, "mph_wr_watched": 4, "mph_wr_stash": 5, "mph_wr_state": 6}

    def immediates(layout: WatchLayout) -> set[int]:
        code = encode(enter_program(layout, SLOTS), fds).bytecode
        return {int.from_bytes(code[i + 4 : i + 8], "little", signed=True)
                for i in range(0, len(code), 8)}

    imms_a, imms_b = immediates(a), immediates(b)
    assert {1824, 92, 357, 0x814E5F00 - (1 << 32)} <= imms_a and not {2000, 60} & imms_a
    assert {2000, 60, 0x81000000 - (1 << 32)} <= imms_b and not {1824, 357} & imms_b
    assert len(encode(exit_program(SLOTS), fds).bytecode) > 0


# --- cost ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overhead(capsys: pytest.CaptureFixture[str]) -> None:
    """Cost per watched write and per unrelated syscall, measured interleaved in one run.
    Bounds are loose (shared machines); the numbers are printed for the README."""
    result = watch.measure_overhead(writes=10_000, syscalls=200_000, rounds=10)
    with capsys.disabled():
        print(f"\nwrite watcher overhead: {result}")
    assert result.per_syscall_ns < 2_000
    assert result.per_watched_write_ns < 20_000


# --- blind spots, documented by tests ----------------------------------------------------------


def test_unresident_attr_is_counted_not_seen(maps: tuple[Map, Map, Map],
                                             tmp_path: pathlib.Path) -> None:
    """An attr on a page that is not mapped in yet: the kernel faults it in and writes, the
    tracer (which may not fault) cannot read the map fd. The write is missed, but counted."""
    guard, target, _ = maps
    key, value = buffer(struct.pack("<I", 1)), buffer(struct.pack("<Q", 5))
    attr = struct.pack("<IIQQQ", target.fd.number, 0, ctypes.addressof(key),
                       ctypes.addressof(value), 0).ljust(mmap.PAGESIZE, b"\0")
    path = tmp_path / "attr"
    path.write_bytes(attr)
    with WriteWatcher(guard) as w, open(path, "r+b") as f:
        w.watch(target, SLOT)
        mem = mmap.mmap(f.fileno(), mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
        anchor = ctypes.c_char.from_buffer(mem)  # an address, without touching the page
        try:
            before = versions(guard)
            ret = ctypes.CDLL(None, use_errno=True).syscall(
                bpf_syscall_numbers()[0], int(Cmd.MAP_UPDATE_ELEM),
                ctypes.c_void_p(ctypes.addressof(anchor)), 32)
            assert ret == 0, os.strerror(ctypes.get_errno())
        finally:
            del anchor
            mem.close()
        assert target.lookup(1) == struct.pack("<Q", 5)
        assert versions(guard) == before
        assert w.counters().unreadable == 1


def test_mmapped_array_stores_are_not_seen(maps: tuple[Map, Map, Map]) -> None:
    """Stores into a BPF_F_MMAPABLE array through its memory mapping make no syscall."""
    guard, _, _ = maps
    with Map.create(MapType.ARRAY, 4, 8, 1, flags=MapFlags.MMAPABLE, name="mph_t_mmap") as m, \
            WriteWatcher(guard) as w:
        w.watch(m, SLOT)
        before = versions(guard)
        with mmap.mmap(m.fd.number, mmap.PAGESIZE) as mem:
            mem[0:8] = struct.pack("<Q", 7)
        assert m.lookup(0) == struct.pack("<Q", 7)
        assert versions(guard) == before
