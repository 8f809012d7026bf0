"""The LLVM engine: one MCJIT per process, the runtime module, and compiled program modules.

The runtime bitcode is added once with its symbols visible: that is the management API
Python calls through ctypes, and the home of the runtime's slow paths (map updates and
deletes, lookups in maps of unknown type: `SHARED` in runtime.c). Every program module links
in the runtime's inline part only (the fast paths, always-inline, with internal linkage, so
that LLVM inlines helpers and map lookups into the program and folds the map's constant
header) plus declarations of the slow paths, which MCJIT resolves to the engine's copy: a
program version costs the compile time of its own code, not of the whole runtime again.
The copies share no state (the runtime has no mutable globals).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import os
import re
import threading
import time
from dataclasses import dataclass

import llvmlite.binding as llvm

from .build import runtime_bitcode

_u64 = ctypes.c_uint64
_u32 = ctypes.c_uint32
_ptr = ctypes.c_void_p
_i64 = ctypes.c_int64

ENTRY = ctypes.CFUNCTYPE(_u64, _u64)

# Signatures of the runtime's management API (see runtime.c).
_API = {
    "rt_map_new": (_ptr, (_u32, _u32, _u32, _u32, _u32, _ptr)),
    "rt_map_free": (None, (_ptr,)),
    "rt_map_read": (_i64, (_ptr, _ptr, _ptr)),
    "rt_map_write": (_i64, (_ptr, _ptr, _ptr, _u64)),
    "rt_map_remove": (_i64, (_ptr, _ptr)),
    "rt_map_slot": (_i64, (_ptr, _u32, _ptr, _ptr)),
    "rt_map_clear": (None, (_ptr,)),
    "rt_header_size": (_u32, ()),
    "rt_xdp_size": (_u32, ()),
    "rt_run_frame": (_u64, (_ptr, _ptr, _ptr, _ptr, _u32, _u32, _ptr)),
    "rt_replay": (_u64, (_ptr, _ptr, _ptr, _ptr, _ptr, _u32, _ptr)),
    "rt_replay_overhead": (_u64, (_ptr, _ptr, _ptr, _ptr, _u32)),
    "rt_xsk_batch": (_u32, (_ptr, _ptr, _ptr, _ptr, _u32, _u32)),
}


_FAST_PIPELINE = (
    "global_dead_code_eliminate", "always_inliner", "sroa", "instruction_combine",
    # The second SROA splits the eBPF stack into scalars once instcombine has folded the
    # helpers' inttoptr(ptrtoint(stack slot)) back into GEPs and SCCP the key-size tests.
    "simplify_cfg", "sccp", "sroa", "new_gvn", "instruction_combine", "jump_threading",
    "dead_store_elimination", "aggressive_dce", "simplify_cfg", "global_dead_code_eliminate",
)


# For big modules (the firewall's specialized version: ~3,500 lifted instructions in ~700
# blocks of comparison trees) the fast pipeline without its second instcombine: 5-13% less
# compile CPU there, run time unchanged within the noise (docs/results/userspace.md). Cheaper
# cuts cost more in codegen than they save: without jump threading instruction selection
# gets more blocks.
_LEAN_PIPELINE = tuple(p for i, p in enumerate(_FAST_PIPELINE)
                       if not (p == "instruction_combine" and i > 3))
# Lifted instructions (indented lines of the module's text) above which `lean` is the default:
# of the NFs' versions only the firewall's specialized one (~4,900 since the lifter builds
# SSA; the next, switch specialized, ~1,700) is above it.
LEAN_ABOVE = 3000
_PIPELINES = {"fast": _FAST_PIPELINE, "lean": _LEAN_PIPELINE}


class JitError(RuntimeError):
    """LLVM refused the lifted module (a bug in the lifter: the message has the details)."""


_DEFINE = re.compile(r"^define (.*) \{$")


def _inline_part(runtime: llvm.ModuleRef) -> bytes:
    """The runtime as program modules link it: the always-inline functions (and the internal
    ones they use) keep their bodies; every other exported function becomes a declaration,
    resolved at load time to the engine's compiled copy. Built once per process, as text:
    llvmlite cannot delete a function's body, and LLVM's printer writes each definition as
    a `define ... {` line and a closing `}` line, which is all this relies on."""
    external = {f.name for f in runtime.functions
                if not f.is_declaration and f.linkage == llvm.Linkage.external
                and not any(b"alwaysinline" in a for a in f.attributes)}
    out: list[str] = []
    skipping = False
    for line in str(runtime).splitlines():
        if skipping:
            skipping = line != "}"
            continue
        m = _DEFINE.match(line)
        if m is not None:
            name = re.search(r'@("[^"]+"|[\w.$]+)\(', line)
            if name is not None and name.group(1).strip('"') in external:
                out.append(f"declare {m.group(1)}")
                skipping = True
                continue
        out.append(line)
    try:
        module = llvm.parse_assembly("\n".join(out))
        module.verify()
    except RuntimeError as exc:
        raise JitError(f"cannot split the runtime into its inline part: {exc}") from None
    return module.as_bitcode()


class _Engine:
    def __init__(self) -> None:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
        target = llvm.Target.from_default_triple()
        self.triple = llvm.get_process_triple()
        self.machine = target.create_target_machine(
            opt=2, jit=True, codemodel="jitdefault", cpu=llvm.get_host_cpu_name(),
            features=llvm.get_host_cpu_features().flatten())
        self.layout = str(self.machine.target_data)
        self.bitcode = runtime_bitcode()
        runtime = self._runtime_module()
        self.helpers = frozenset(f.name for f in runtime.functions
                                 if f.name.startswith("rt_helper_") and not f.is_declaration)
        self.inline_bitcode = _inline_part(runtime)
        self.engine = llvm.create_mcjit_compiler(runtime, self.machine)
        self.engine.finalize_object()
        self.lock = threading.Lock()
        # Native code by lifted IR (entry symbol aside): the IR names every map and the
        # environment by address, so equal text is equal code for the same data plane.
        self.cache: dict[str, _Cached] = {}
        self.counter = itertools.count()
        self.api = {}
        for name, (restype, argtypes) in _API.items():
            address = self.engine.get_function_address(name)
            if not address:
                raise JitError(f"the runtime bitcode has no function {name}: rebuild it "
                               "(python -m morpheus.userspace.build)")
            self.api[name] = ctypes.CFUNCTYPE(restype, *argtypes)(address)

    def _runtime_module(self, bitcode: bytes | None = None) -> llvm.ModuleRef:
        module = llvm.parse_bitcode(self.bitcode if bitcode is None else bitcode)
        module.triple = self.triple
        module.data_layout = self.layout
        return module

    def inline_runtime(self) -> llvm.ModuleRef:
        """A fresh copy of the runtime's inline part, to link into one program module."""
        return self._runtime_module(self.inline_bitcode)

    def optimize(self, module: llvm.ModuleRef, pipeline: str = "") -> None:
        """`o2`: LLVM's O2 pipeline. `fast`: the passes that matter for lifted eBPF (inline
        the runtime, the stack to SSA, fold the constant map headers, CSE, dead code),
        about a third of O2's time. `lean`: `fast` with one instcombine, for big modules.
        Default: MORPHEUS_JIT_PIPELINE, else `fast`."""
        pipeline = pipeline or os.environ.get("MORPHEUS_JIT_PIPELINE", "fast")
        options = llvm.create_pipeline_tuning_options(speed_level=2)
        builder = llvm.create_pass_builder(self.machine, options)
        if pipeline == "o2":
            builder.getModulePassManager().run(module, builder)
            return
        if pipeline not in _PIPELINES:
            raise ValueError(f"unknown JIT pipeline {pipeline!r} (o2, fast or lean)")
        pm = llvm.create_new_module_pass_manager()
        for name in _PIPELINES[pipeline]:
            getattr(pm, f"add_{name}_pass")()
        pm.run(module, builder)


@functools.cache
def engine() -> _Engine:
    """The process's JIT engine (created on first use; raises RuntimeUnavailable when the
    runtime bitcode is missing)."""
    return _Engine()


@dataclass
class _Cached:
    module: llvm.ModuleRef
    address: int
    users: int = 0


@dataclass
class CompiledModule:
    """A program compiled to native code. Keep it alive while the entry may run.

    Compiling IR equal to a module that is still loaded (the same program against the same
    maps: a specialization cycle that arrives at the same version, a return to the
    original) reuses its native code: `cached` is then true and the times are the lookup's.
    The code stays loaded until the last CompiledModule using it is closed."""

    module: llvm.ModuleRef
    entry_address: int
    entry: ctypes._CFuncPtr
    compile_ms: float  # wall clock
    compile_cpu_ms: float  # CPU time of this thread (the VM's other tenants do not count)
    ir: str
    cached: bool = False
    key: str | None = None

    def close(self) -> None:
        e = engine()
        with e.lock:
            if self.module is None:
                return
            shared = e.cache.get(self.key) if self.key is not None else None
            if shared is not None and shared.module is self.module:
                shared.users -= 1
                if shared.users <= 0:
                    del e.cache[self.key]  # type: ignore[arg-type]
                    e.engine.remove_module(self.module)
            else:
                e.engine.remove_module(self.module)
            self.module = None  # type: ignore[assignment]


def cache_key(ir_text: str, entry_symbol: str) -> str:
    """What identifies a lifted module's native code: its text with the entry renamed."""
    return hashlib.sha256(ir_text.replace(entry_symbol, "\0entry").encode()).hexdigest()


def fresh_symbol(prefix: str = "morpheus_entry") -> str:
    return f"{prefix}_{next(engine().counter)}"


def default_pipeline(ir_text: str) -> str:
    """MORPHEUS_JIT_PIPELINE if set, else `lean` for a big module and `fast` otherwise."""
    chosen = os.environ.get("MORPHEUS_JIT_PIPELINE")
    if chosen:
        return chosen
    return "lean" if ir_text.count("\n  ") > LEAN_ABOVE else "fast"


def compile_module(ir_text: str, entry_symbol: str) -> CompiledModule:
    """Parse, link with the runtime, optimize (O3) and compile one lifted module."""
    e = engine()
    started = time.perf_counter()
    started_cpu = time.thread_time()
    key = cache_key(ir_text, entry_symbol)
    with e.lock:
        hit = e.cache.get(key)
        if hit is not None:
            hit.users += 1
            return CompiledModule(hit.module, hit.address, ENTRY(hit.address),
                                  (time.perf_counter() - started) * 1000,
                                  (time.thread_time() - started_cpu) * 1000, ir_text,
                                  cached=True, key=key)
    try:
        module = llvm.parse_assembly(ir_text)
    except RuntimeError as exc:
        raise JitError(f"lifted IR does not parse: {exc}") from None
    module.triple = e.triple
    module.data_layout = e.layout
    module.link_in(e.inline_runtime())
    for fn in module.functions:
        if not fn.is_declaration and fn.name != entry_symbol:
            fn.linkage = llvm.Linkage.internal
    for gv in module.global_variables:
        if not gv.is_declaration:
            gv.linkage = llvm.Linkage.internal
    try:
        module.verify()
    except RuntimeError as exc:
        raise JitError(f"lifted IR is invalid: {exc}") from None
    e.optimize(module, default_pipeline(ir_text))
    with e.lock:
        e.engine.add_module(module)
        e.engine.finalize_object()
        address = e.engine.get_function_address(entry_symbol)
        if address:
            e.cache[key] = _Cached(module, address, users=1)
    if not address:
        raise JitError(f"compiled module has no entry {entry_symbol}")
    elapsed = (time.perf_counter() - started) * 1000
    cpu = (time.thread_time() - started_cpu) * 1000
    return CompiledModule(module, address, ENTRY(address), elapsed, cpu, ir_text, key=key)
