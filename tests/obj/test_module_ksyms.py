"""kfuncs and ksyms of kernel modules, resolved against module BTF given as data.

The kernel here has no modules, so the tests write the modules' split BTF themselves, on top
of the real vmlinux BTF (the object's types, `struct xdp_md` and `int`, are the kernel's),
and check what libbpf would produce: a module kfunc call's `off` is the module's index in
the program's fd_array (index 0 reserved, modules numbered by the first kfunc in name order
that resolves there), its `imm` the kfunc's id in the module's split BTF; a module ksym's
ld_imm64 carries the module BTF's fd once encoded.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.ir import encode
from morpheus.ir.opcodes import CallSrc, PseudoSrc
from morpheus.ir.program import LinkError
from morpheus.kernel.btf import vmlinux_btf
from morpheus.obj import ObjectError, read_object
from morpheus.obj.btf import BTF, Kind
from morpheus.obj.core import Target
from morpheus.obj.reader import ReadOptions

from .btfgen import BTFWriter

OBJECT = "modules/module_kfunc.v3"


def _module(functions: dict[str, int] | None = None, variables: tuple[str, ...] = ()) -> BTF:
    """A module's split BTF on top of vmlinux with kfuncs `name: number of parameters`
    (struct xdp_md *ctx, then unsigned ints) returning int, and int variables."""
    base = vmlinux_btf()
    w = BTFWriter(base)
    xdp_md = base.find(Kind.STRUCT, "xdp_md")
    int_t = base.find(Kind.INT, "int")
    uint_t = base.find(Kind.INT, "unsigned int")
    assert xdp_md is not None and int_t is not None and uint_t is not None
    ctx_ptr = w.ptr(xdp_md.id)
    for name, nparams in (functions or {}).items():
        params = [("ctx", ctx_ptr)] + [(f"arg{i}", uint_t.id) for i in range(1, nparams)]
        w.func(name, w.func_proto(int_t.id, params))
    for name in variables:
        w.var(name, int_t.id)
    return BTF(w.blob(), base=base)


def _read(modules: tuple[tuple[str, BTF], ...], path: Path):
    spec = read_object(path, options=ReadOptions(target=Target(vmlinux_btf(), modules=modules)))
    return spec.program()


def _own_id(btf: BTF, kind: Kind, name: str) -> int:
    found = btf.find_own(kind, name)
    assert found is not None and found.id >= btf.first_id
    return found.id


@pytest.mark.parametrize("cpu", ["v2", "v3"])
def test_module_kfuncs_get_fd_array_slots_in_libbpf_order(test_objects: dict[str, Path],
                                                          cpu: str) -> None:
    # Listed b, c, a (the kernel's BTF id order), the slots still follow the kfuncs' names:
    # bpf_mph_mod_a_kfunc (mph_a) is 1, bpf_mph_mod_b_kfunc (mph_b) 2; mph_c holds only
    # the variable, so it comes after every kfunc module.
    mph_a = _module({"bpf_mph_mod_a_kfunc": 2})
    mph_b = _module({"bpf_mph_mod_b_kfunc": 1})
    mph_c = _module(variables=("mph_mod_counter",))
    prog = _read((("mph_b", mph_b), ("mph_c", mph_c), ("mph_a", mph_a)),
                 test_objects[OBJECT.replace(".v3", f".{cpu}")])
    assert prog.module_btfs == ("mph_a", "mph_b", "mph_c")
    calls = [i for i in prog.program.insns if i.is_call and i.src == CallSrc.KFUNC]
    vmlinux_kfunc = vmlinux_btf().find(Kind.FUNC, "bpf_dynptr_from_xdp")
    assert vmlinux_kfunc is not None
    # bpf_dynptr_from_xdp, the weak ___old flavour (unset: its prototype differs), a, b
    assert [(c.off, c.imm) for c in calls] == [
        (0, vmlinux_kfunc.id),
        (0, 0),
        (1, _own_id(mph_a, Kind.FUNC, "bpf_mph_mod_a_kfunc")),
        (2, _own_id(mph_b, Kind.FUNC, "bpf_mph_mod_b_kfunc")),
    ]
    btf_loads = [i for i in prog.program.insns if i.is_ld_imm64 and i.src == PseudoSrc.BTF_ID]
    # the variable (mph_c, slot 3), then the weak kfunc's address check (mph_b, slot 2)
    assert [(i.imm & 0xFFFFFFFF, i.imm >> 32) for i in btf_loads] == [
        (_own_id(mph_c, Kind.VAR, "mph_mod_counter"), 3),
        (_own_id(mph_b, Kind.FUNC, "bpf_mph_mod_b_kfunc"), 2),
    ]
    old = [i for i in prog.program.insns if i.is_ld_imm64 and i.src == PseudoSrc.NONE]
    assert [i.imm for i in old] == [0]  # the unset weak flavour's address


def test_encode_puts_the_module_btf_fds_in_the_ld_imm64(test_objects: dict[str, Path]) -> None:
    modules = (("mph_a", _module({"bpf_mph_mod_a_kfunc": 2})),
               ("mph_b", _module({"bpf_mph_mod_b_kfunc": 1})),
               ("mph_c", _module(variables=("mph_mod_counter",))))
    prog = _read(modules, test_objects[OBJECT])
    fd_array = (0, 41, 42, 43)
    code = encode(prog.program, {}, fd_array).bytecode
    slots = [struct.unpack_from("<BBhi", code, at) for at in range(0, len(code), 8)]
    ld_btf = [n for n, (op, regs, _, _) in enumerate(slots)
              if op == 0x18 and regs >> 4 == PseudoSrc.BTF_ID]
    assert [slots[n + 1][3] for n in ld_btf] == [43, 42]  # mph_c's fd, mph_b's fd
    kfunc_offs = [off for op, regs, off, _ in slots if op == 0x85 and regs >> 4 == CallSrc.KFUNC]
    assert kfunc_offs == [0, 0, 1, 2]
    with pytest.raises(LinkError, match="fd_array index 3"):
        encode(prog.program, {}, (0, 41, 42))


def test_vmlinux_first_then_modules_in_the_targets_order(test_objects: dict[str, Path]) -> None:
    # Two modules define bpf_mph_mod_a_kfunc: the first one listed wins (libbpf walks the
    # kernel's BTF objects by id). A module that reuses a vmlinux name does not shadow it.
    first = _module({"bpf_mph_mod_a_kfunc": 2, "bpf_mph_mod_b_kfunc": 1,
                     "bpf_dynptr_from_xdp": 3}, variables=("mph_mod_counter",))
    second = _module({"bpf_mph_mod_a_kfunc": 2})
    prog = _read((("mph_first", first), ("mph_second", second)), test_objects[OBJECT])
    assert prog.module_btfs == ("mph_first",)
    calls = [(i.off, i.imm) for i in prog.program.insns if i.is_call and i.src == CallSrc.KFUNC]
    vmlinux_kfunc = vmlinux_btf().find(Kind.FUNC, "bpf_dynptr_from_xdp")
    assert vmlinux_kfunc is not None
    assert calls[0] == (0, vmlinux_kfunc.id)
    assert calls[2] == (1, _own_id(first, Kind.FUNC, "bpf_mph_mod_a_kfunc"))


def test_a_kfunc_no_module_has_is_an_error_naming_it(test_objects: dict[str, Path]) -> None:
    mph_b = _module({"bpf_mph_mod_b_kfunc": 1}, variables=("mph_mod_counter",))
    with pytest.raises(ObjectError,
                       match=r"kfunc 'bpf_mph_mod_a_kfunc': not found in the kernel's BTF "
                             r"\(vmlinux or its modules\)"):
        _read((("mph_b", mph_b),), test_objects[OBJECT])


def test_a_module_kfunc_of_another_prototype_is_an_error_naming_the_module(
        test_objects: dict[str, Path]) -> None:
    mph_a = _module({"bpf_mph_mod_a_kfunc": 3, "bpf_mph_mod_b_kfunc": 1},
                    variables=("mph_mod_counter",))
    with pytest.raises(ObjectError, match=r"bpf_mph_mod_a_kfunc.*does not match.*in mph_a"):
        _read((("mph_a", mph_a),), test_objects[OBJECT])
