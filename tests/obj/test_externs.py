"""Extern symbols resolved against a target given as data: ksym variables, kconfig values."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from morpheus.ir.opcodes import PseudoSrc
from morpheus.kernel.btf import vmlinux_btf
from morpheus.obj import ObjectError, read_object
from morpheus.obj.btf import BTF, Kind
from morpheus.obj.core import Target
from morpheus.obj.externs import Extern, encode_kconfig
from morpheus.obj.reader import ReadOptions

from .btfgen import BTFWriter


def test_typed_ksym_variable_is_its_btf_id(test_objects: dict[str, Path]) -> None:
    btf = vmlinux_btf()
    spec = read_object(test_objects["readonly/ksym_var.v3"],
                       options=ReadOptions(target=Target(btf)))
    loads = [i for i in spec.program().program.insns if i.is_ld_imm64 and i.src == PseudoSrc.BTF_ID]
    var = btf.find(Kind.VAR, "__softirq_pending")
    assert var is not None and [i.imm for i in loads] == [var.id]


def test_ksym_missing_from_the_target_is_an_error_naming_it(
        test_objects: dict[str, Path]) -> None:
    w = BTFWriter()
    w.int("int", 4, signed=True)
    with pytest.raises(ObjectError, match=r"__softirq_pending.*not found"):
        read_object(test_objects["readonly/ksym_var.v3"],
                    options=ReadOptions(target=Target(_btf(w))))


def test_kconfig_from_the_given_configuration(test_objects: dict[str, Path]) -> None:
    target = Target(vmlinux_btf(), kconfig={"CONFIG_HZ": "1000", "CONFIG_XDP_SOCKETS": "n"},
                    kernel_version=(5 << 16) + (10 << 8) + 3)
    spec = read_object(test_objects["kconfig.v3"], options=ReadOptions(target=target))
    data = spec.maps[".kconfig"].data
    assert data is not None
    assert (1000).to_bytes(4, "little") in data and ((5 << 16) + (10 << 8) + 3).to_bytes(
        4, "little") in data
    with pytest.raises(ObjectError, match=r"CONFIG_HZ \(not weak\) is not set"):
        read_object(test_objects["kconfig.v3"],
                    options=ReadOptions(target=Target(vmlinux_btf(), kconfig={})))


def test_kconfig_value_encodings() -> None:
    w = BTFWriter()
    char = w.int("char", 1, signed=True)
    boolean = w._add(struct.pack("<IIII", w._name("_Bool"), Kind.INT << 24, 1,
                                               (4 << 24) | 8))
    u16 = w.int("unsigned short", 2)
    arr = w._add(struct.pack("<IIIIII", 0, Kind.ARRAY << 24, 0, char, u16, 8))
    btf = _btf(w)
    assert encode_kconfig(btf, Extern("CONFIG_S", ".kconfig", False, 0, arr, size=8),
                          '"abcdefghij"') == b"abcdefg\0"
    assert encode_kconfig(btf, Extern("CONFIG_B", ".kconfig", False, 0, boolean, size=1),
                          "y") == b"\x01"
    with pytest.raises(ObjectError, match="not y or n"):
        encode_kconfig(btf, Extern("CONFIG_B", ".kconfig", False, 0, boolean, size=1), "m")
    with pytest.raises(ObjectError, match="does not fit"):
        encode_kconfig(btf, Extern("CONFIG_N", ".kconfig", False, 0, u16, size=2), "70000")
    assert encode_kconfig(btf, Extern("CONFIG_C", ".kconfig", False, 0, char, size=1),
                          "m") == b"m"


def _btf(w: BTFWriter) -> BTF:
    return BTF(w.blob())
