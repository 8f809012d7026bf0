"""Module kfuncs and ksyms at load time: the module BTF fds we open and the fd_array we pass.

This kernel has no module BTF, so what BPF_PROG_LOAD receives is checked against a fake
bpf() that serves a table of BTF objects (GET_NEXT_ID, GET_FD_BY_ID, OBJ_GET_INFO_BY_FD) and
records the loads; the real-kernel tests show that the kernel reads our fd_array where a
kfunc call's `off` points, and takes the fd our encoder puts in a ksym's ld_imm64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from morpheus.ir import Program
from morpheus.ir.opcodes import CallSrc, PseudoSrc
from morpheus.kernel import VerifierError, use_backend
from morpheus.kernel.btf import ModuleBTFMissing, kernel_btf_objects, module_btfs, vmlinux_btf
from morpheus.loader import (
    KsymWithoutAddress,
    load_collection,
    load_program_spec,
    read_for_kernel,
)
from morpheus.obj import ObjectSpec, read_object
from morpheus.obj.core import Target
from morpheus.obj.reader import ReadOptions
from morpheus.uapi import Cmd

from .obj.test_module_ksyms import OBJECT, _module


@dataclass
class _Load:
    insns: bytes
    fd_array: tuple[int, ...]


class FakeBTFKernel:
    """BTF objects (id, name, kernel_btf) to walk and open; program loads recorded. Every
    fd it hands out is a real one (/dev/null), so leaks and closes are real too."""

    def __init__(self, objects: list[tuple[int, str, bool]], fd_array_len: int) -> None:
        self.objects = {i: (name, kernel) for i, name, kernel in objects}
        self.fd_array_len = fd_array_len
        self.btf_fds: dict[int, int] = {}  # fd → BTF object id
        self.opened: list[int] = []  # BTF object ids, in the order opened
        self.loads: list[_Load] = []

    def __call__(self, cmd: int, attr: ctypes.Array) -> int:
        raw = bytes(attr)
        if cmd == Cmd.BTF_GET_NEXT_ID:
            (start,) = struct.unpack_from("<I", raw, 0)
            later = [i for i in self.objects if i > start]
            if not later:
                raise OSError(errno.ENOENT, "no more")
            struct.pack_into("<I", attr, 4, min(later))
            return 0
        if cmd == Cmd.BTF_GET_FD_BY_ID:
            (btf_id,) = struct.unpack_from("<I", raw, 0)
            fd = os.open("/dev/null", os.O_RDONLY)
            self.btf_fds[fd] = btf_id
            self.opened.append(btf_id)
            return fd
        if cmd == Cmd.OBJ_GET_INFO_BY_FD:
            fd, _size, info = struct.unpack_from("<IIQ", raw, 0)
            name, kernel = self.objects[self.btf_fds[fd]]
            name_ptr, name_len = struct.unpack_from("<QI", ctypes.string_at(info, 32), 16)
            ctypes.memmove(info + 12, struct.pack("<I", self.btf_fds[fd]), 4)
            ctypes.memmove(info + 28, struct.pack("<I", int(kernel)), 4)
            ctypes.memmove(name_ptr, name.encode()[: name_len - 1] + b"\0", len(name) + 1)
            return 0
        if cmd == Cmd.BTF_LOAD:
            return os.open("/dev/null", os.O_RDONLY)
        if cmd == Cmd.PROG_LOAD:
            count, insns = struct.unpack_from("<IQ", raw, 4)
            (fd_array,) = struct.unpack_from("<Q", raw, 120)
            fds = (struct.unpack(f"<{self.fd_array_len}i",
                                 ctypes.string_at(fd_array, 4 * self.fd_array_len))
                   if fd_array else ())
            self.loads.append(_Load(ctypes.string_at(insns, 8 * count), fds))
            return os.open("/dev/null", os.O_RDONLY)
        raise OSError(errno.EINVAL, f"command {cmd} is not faked")

    def fd_of(self, btf_id: int) -> int:
        return next(fd for fd, i in self.btf_fds.items() if i == btf_id)


# The kernel's BTF objects: a program's BTF that happens to be called like a module is not
# a module's (kernel_btf 0), and modules come in id order, not name order.
OBJECTS = [(1, "vmlinux", True), (2, "mph_a", False), (3, "mph_b", True), (5, "mph_c", True),
           (7, "mph_a", True)]


def _spec(test_objects: dict[str, Path]) -> ObjectSpec:
    modules = (("mph_a", _module({"bpf_mph_mod_a_kfunc": 2})),
               ("mph_b", _module({"bpf_mph_mod_b_kfunc": 1})),
               ("mph_c", _module(variables=("mph_mod_counter",))))
    return read_object(test_objects[OBJECT],
                       options=ReadOptions(target=Target(vmlinux_btf(), modules=modules)))


def _check_load(fake: FakeBTFKernel, load: _Load) -> None:
    a, b, c = fake.fd_of(7), fake.fd_of(3), fake.fd_of(5)
    assert load.fd_array == (0, a, b, c)  # index 0 reserved, then mph_a, mph_b, mph_c
    slots = [struct.unpack_from("<BBhi", load.insns, at) for at in range(0, len(load.insns), 8)]
    ld_btf = [n for n, (op, regs, _, _) in enumerate(slots)
              if op == 0x18 and regs >> 4 == PseudoSrc.BTF_ID]
    assert [slots[n + 1][3] for n in ld_btf] == [c, b]  # the module BTF fds themselves
    assert [off for op, regs, off, _ in slots
            if op == 0x85 and regs >> 4 == CallSrc.KFUNC] == [0, 0, 1, 2]


def test_collection_opens_module_btfs_once_and_passes_fd_array(
        test_objects: dict[str, Path]) -> None:
    spec = _spec(test_objects)
    fake = FakeBTFKernel(OBJECTS, fd_array_len=4)
    with use_backend(fake):
        coll = load_collection(spec)
        try:
            assert set(coll.module_btf_fds) == {"mph_a", "mph_b", "mph_c"}
            _check_load(fake, fake.loads[0])
            # another version of the program reuses the collection's module fds
            coll.load_program().close()
            assert fake.loads[1].fd_array == fake.loads[0].fd_array
        finally:
            coll.close()
    assert fake.opened == [i for i, _, _ in OBJECTS]  # one walk: each opened once
    assert not coll.module_btf_fds


def test_program_loaded_without_a_collection_opens_them_for_the_load(
        test_objects: dict[str, Path]) -> None:
    spec = _spec(test_objects)
    fake = FakeBTFKernel(OBJECTS, fd_array_len=4)
    with use_backend(fake):
        load_program_spec(spec.program(), {}).close()
    _check_load(fake, fake.loads[0])
    # the no_fd_leaks fixture checks that the module fds were closed after the load


def test_a_module_that_is_not_loaded_is_named(test_objects: dict[str, Path]) -> None:
    spec = _spec(test_objects)
    fake = FakeBTFKernel([(1, "vmlinux", True), (3, "mph_b", True), (4, "mph_a", False)],
                         fd_array_len=4)
    with use_backend(fake), pytest.raises(ModuleBTFMissing,
                                          match=r"kernel module\(s\) mph_a, mph_c.*modprobe"):
        load_collection(spec)
    assert not fake.loads


def test_module_btfs_come_in_btf_id_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """module_btfs() reads /sys/kernel/btf/<module> and orders the modules as libbpf meets
    them: by BTF object id (here mph_b before mph_a)."""
    import morpheus.kernel.btf as kbtf

    (tmp_path / "vmlinux").write_bytes(b"")
    (tmp_path / "mph_a").write_bytes(_module({"bpf_mph_mod_a_kfunc": 2}).blob())
    (tmp_path / "mph_b").write_bytes(_module({"bpf_mph_mod_b_kfunc": 1}).blob())
    monkeypatch.setattr(kbtf, "SYS_BTF", tmp_path)
    module_btfs.cache_clear()
    try:
        with use_backend(FakeBTFKernel(OBJECTS, fd_array_len=0)):
            found = module_btfs()
    finally:
        module_btfs.cache_clear()
    assert [name for name, _ in found] == ["mph_b", "mph_a"]
    assert found[1][1].find_own(*_kfunc("bpf_mph_mod_a_kfunc")) is not None


def _kfunc(name: str):
    from morpheus.obj.btf import Kind

    return Kind.FUNC, name


# --- the real kernel ------------------------------------------------------------------------


@pytest.mark.kernel
def test_the_kernel_lists_vmlinux_as_kernel_btf() -> None:
    objects = kernel_btf_objects()
    assert "vmlinux" in [o.name for o in objects]
    assert all(o.kernel_btf for o in objects)


@pytest.mark.kernel
def test_the_kernel_reads_our_fd_array_at_the_kfunc_calls_off(
        test_objects: dict[str, Path]) -> None:
    # A kfunc call with off 1 names fd_array[1]. Given vmlinux's BTF there (found by our
    # walk, as a module's would be), the kernel reads it and objects that it is not a
    # module's; with no fd_array at all it says so. Either way it read what we passed.
    spec = read_for_kernel(test_objects["ksym.v3"])
    prog = spec.program()
    insns = tuple(i._replace(off=1) if i.is_call and i.src == CallSrc.KFUNC and i.imm else i
                  for i in prog.program.insns)
    for modules, said in ((("vmlinux",), "BTF fd for kfunc is not a module BTF"),
                          ((), "kfunc offset > 0 without fd_array is invalid")):
        changed = replace(prog, program=Program(prog.name, insns), module_btfs=modules)
        with pytest.raises(VerifierError) as refused:
            load_collection(replace(spec, programs={prog.name: changed})).close()
        assert said in refused.value.log


@pytest.mark.kernel
def test_the_kernel_takes_the_btf_fd_we_put_in_a_ksym_load(
        test_objects: dict[str, Path]) -> None:
    # The typed ksym's ld_imm64 names fd_array slot 1, here vmlinux's BTF: the kernel accepts
    # the fd as a kernel BTF and finds the variable, and then (no CONFIG_KALLSYMS_ALL) no
    # address; slot 1 left as the raw number would be fd 1, not a BTF at all.
    spec = read_for_kernel(test_objects["readonly/ksym_var.v3"])
    prog = spec.program()
    insns = tuple(i._replace(imm=i.imm | 1 << 32)
                  if i.is_ld_imm64 and i.src == PseudoSrc.BTF_ID else i
                  for i in prog.program.insns)
    changed = replace(prog, program=Program(prog.name, insns), module_btfs=("vmlinux",))
    with pytest.raises(KsymWithoutAddress, match=r"__softirq_pending.*CONFIG_KALLSYMS_ALL"):
        load_collection(replace(spec, programs={prog.name: changed})).close()
