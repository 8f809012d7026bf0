"""CO-RE relocation against BTF the test writes: fields moved, bitfields shifted, a field
missing, names with flavours, ambiguous candidates. Pure tests check the relocated values;
kernel tests compare the program tag with libbpf given the same BTF (btf_custom_path)."""

from __future__ import annotations

import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from morpheus.obj import ObjectError, read_object
from morpheus.obj.btf import BTF, BTFExt
from morpheus.obj.core import POISON_IMM, CoreError, Relocator, RelocKind, Target
from morpheus.obj.reader import ReadOptions, _Reader

from .btfgen import BTFWriter

PROGS = Path(__file__).resolve().parents[1] / "progs"
# Local struct task_struct___v1 member indices: prio 0, in_execve 1, in_iowait 2, pid 3, tgid 4.
PID, TGID, PRIO, EXECVE, IOWAIT = "0:3", "0:4", "0:0", "0:1", "0:2"


def task_btf(variant: str) -> bytes:
    """A kernel whose task_struct is laid out differently from the object's local one."""
    w = BTFWriter()
    int_t = w.int("int", 4, signed=True)
    uint_t = w.int("unsigned int", 4)
    pid_t = w.typedef("pid_t", int_t)
    members = [("prio", int_t, 0, 0), ("in_execve", uint_t, 40, 1),
               ("in_iowait", uint_t, 47, 1), ("pid", pid_t, 64, 0)]
    if variant != "missing":
        members.append(("tgid", pid_t, 96, 0))
    name = "task_struct___2" if variant == "flavoured" else "task_struct"
    w.struct(name, 64, members)
    if variant == "ambiguous":
        w.struct("task_struct___other", 64, [("pid", pid_t, 128, 0), ("tgid", pid_t, 160, 0),
                                              ("prio", int_t, 0, 0), ("in_execve", uint_t, 40, 1),
                                              ("in_iowait", uint_t, 47, 1)])
    w.enum("pid_type", [("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 5), ("PIDTYPE_SID", 7)])
    return w.blob()


def relocated(obj: Path, btf_blob: bytes) -> dict[tuple[RelocKind, str], set[int]]:
    """(kind, access) → new values of every CO-RE record of the object."""
    reader = _Reader(obj.read_bytes(), "t", None)
    reader._read_btf()
    assert reader.btf is not None and reader.btf_ext is not None
    relocator = Relocator(reader.btf, Target(BTF(btf_blob)))
    out: dict[tuple[RelocKind, str], set[int]] = defaultdict(set)
    for relos in reader.btf_ext.core_relos.values():
        for relo in relos:
            result = relocator.resolve(relo)
            out[RelocKind(relo.kind), relo.access].add(-1 if result.poison else result.new)
    return out


@pytest.mark.parametrize("variant", ["moved", "flavoured"])
def test_fields_moved_and_bitfields_shifted(test_objects: dict[str, Path], variant: str) -> None:
    got = relocated(test_objects["core_task.v3"], task_btf(variant))
    K = RelocKind
    assert got[K.FIELD_BYTE_OFFSET, PID] == {8}
    assert got[K.FIELD_EXISTS, TGID] == {1}
    assert got[K.FIELD_BYTE_OFFSET, TGID] == {12}
    assert got[K.FIELD_BYTE_OFFSET, PRIO] == {0}
    assert got[K.TYPE_SIZE, "0"] == {64}
    # in_execve at bit 40, in_iowait at bit 47: read as the u32 at byte 4, shifted out.
    assert got[K.FIELD_BYTE_OFFSET, EXECVE] == {4}
    assert got[K.FIELD_BYTE_SIZE, EXECVE] == {4}
    assert got[K.FIELD_LSHIFT_U64, EXECVE] == {64 - (40 + 1 - 32)}
    assert got[K.FIELD_RSHIFT_U64, EXECVE] == {63}
    assert got[K.FIELD_BYTE_OFFSET, IOWAIT] == {4}
    assert got[K.FIELD_SIGNED, EXECVE] == {0}
    assert got[K.ENUMVAL_EXISTS, "0"] == {1}
    assert got[K.ENUMVAL_VALUE, "0"] == {5}
    assert got[K.ENUMVAL_VALUE, "1"] == {7}


def test_missing_field_is_zero_for_exists_and_poisons_its_access(
        test_objects: dict[str, Path]) -> None:
    got = relocated(test_objects["core_task.v3"], task_btf("missing"))
    assert got[RelocKind.FIELD_EXISTS, TGID] == {0}
    assert got[RelocKind.FIELD_BYTE_OFFSET, TGID] == {-1}  # poisoned
    assert got[RelocKind.FIELD_BYTE_OFFSET, PID] == {8}
    # The whole object reads; the poisoned instruction is libbpf's "bad relo" call, with a note.
    spec = read_object(test_objects["core_task.v3"],
                       options=ReadOptions(target=Target(BTF(task_btf("missing")))))
    insns = spec.program().program.insns
    poisoned = [i for i in insns if i.opcode == 0x85 and i.imm == POISON_IMM]
    assert len(poisoned) == 1
    assert "tgid" in (poisoned[0].meta.note or "")


def test_ambiguous_candidates_are_an_error_naming_program_and_access(
        test_objects: dict[str, Path]) -> None:
    with pytest.raises(ObjectError) as info:
        read_object(test_objects["core_task.v3"],
                    options=ReadOptions(target=Target(BTF(task_btf("ambiguous")))))
    message = str(info.value)
    assert "ambiguous" in message and "xdp_core_task" in message
    assert "instruction" in message and "task_struct___v1" in message and "'0:" in message


def test_no_target_is_a_clear_error(test_objects: dict[str, Path]) -> None:
    with pytest.raises(ObjectError, match="target kernel's BTF is needed"):
        read_object(test_objects["core_task.v3"])


def test_unknown_relocation_kind_and_bad_access_are_core_errors(
        test_objects: dict[str, Path]) -> None:
    reader = _Reader(test_objects["core_task.v3"].read_bytes(), "t", None)
    reader._read_btf()
    assert reader.btf is not None and reader.btf_ext is not None
    relo = next(iter(reader.btf_ext.core_relos.values()))[0]
    relocator = Relocator(reader.btf, Target(BTF(task_btf("moved"))))
    with pytest.raises(CoreError, match="unknown CO-RE relocation kind"):
        relocator.resolve(relo._replace(kind=99))
    with pytest.raises(CoreError, match="access"):
        relocator.resolve(relo._replace(access="0:99"))
    with pytest.raises(CoreError, match="malformed"):
        relocator.resolve(relo._replace(access="x"))


def test_btf_ext_records_of_every_object_parse(test_objects: dict[str, Path]) -> None:
    for key in ("core.v3", "core_kernel.v2", "core_big.v3"):
        reader = _Reader(test_objects[key].read_bytes(), "t", None)
        reader._read_btf()
        assert isinstance(reader.btf_ext, BTFExt)
        assert sum(len(v) for v in reader.btf_ext.core_relos.values()) > 0, key


# --- against libbpf with the same custom BTF -----------------------------------------------


@pytest.fixture(scope="session")
def libbpf_tags_tool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed (needed for the libbpf comparison helper)")
    out = tmp_path_factory.mktemp("libbpf") / "libbpf_tags"
    subprocess.run([gcc, "-O1", "-o", str(out), str(PROGS / "userspace" / "libbpf_tags.c"),
                    "-lbpf"], check=True, capture_output=True)
    return out


@pytest.mark.kernel
@pytest.mark.parametrize("variant", ["moved", "missing", "flavoured"])
def test_same_tags_as_libbpf_with_a_custom_btf(test_objects: dict[str, Path], tmp_path: Path,
                                               libbpf_tags_tool: Path, variant: str) -> None:
    from morpheus.loader import load_collection, read_for_kernel

    btf_file = tmp_path / f"{variant}.btf"
    btf_file.write_bytes(task_btf(variant))
    for key in ("core_task.v2", "core_task.v3"):
        obj = test_objects[key]
        shown = subprocess.run([str(libbpf_tags_tool), str(obj), str(btf_file)],
                               capture_output=True, text=True, check=True).stdout
        theirs = dict(line.split() for line in shown.splitlines())
        with load_collection(read_for_kernel(obj, btf=str(btf_file))) as coll:
            ours = {name: prog.tag for name, prog in coll.programs.items()}
        assert ours == theirs, (key, variant)
