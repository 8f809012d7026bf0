"""The second data plane: the same objects, specialized the same way, run in user space.

A `Program` (before or after specialization) is first loaded into the kernel, whose verifier
is the safety argument, then lifted to LLVM IR (`lift`), linked with a small C runtime of
maps and helpers compiled to bitcode at build time (`runtime.c`, `build`), optimized and
compiled by llvmlite's MCJIT (`jit`). Maps are native tables with the kernel's semantics
(`maps`); `dataplane.UserDataPlane` ties maps and programs together; `replay` runs traces
in native code; `differential` compares against the kernel; `bench` and `versus` measure.
`afxdp` feeds a plane from an interface; `live` serves it while the agent runs (batches,
pauses between them, map views, the guard); `equivalence` is the user-space agent's pre-swap
check; `agentbench` measures the agent on live traffic (runtime.useragent is the agent).

Nothing here needs a system LLVM at run time; clang-16 is needed once, to build the bitcode.
"""
