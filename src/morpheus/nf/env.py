"""A network function running in the kernel, configured, inside its own network namespace.

The default configurations name interfaces 2..9 (devmaps check that an ifindex exists when
an entry is written, and test runs need their ingress device to exist), so the namespace
gets veth pairs with exactly those indexes. Test runs that pass an ingress ifindex must be
made from inside the namespace: use `with env.entered():`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from ..kernel import LoadedProgram, TestRunResult, xdp_ctx
from ..kernel.netns import NetNamespace
from ..loader import Collection, load_collection, read_for_kernel
from ..obj import ObjectSpec
from . import NetworkFunction, get

# veth pairs created in every NF namespace: (index, name) pairs, peers adjacent.
INTERFACE_INDEXES = tuple(range(2, 12))


@dataclass
class NFEnv:
    """An NF's maps and program, loaded and configured, plus the namespace it lives in."""

    nf: NetworkFunction
    spec: ObjectSpec
    collection: Collection
    namespace: NetNamespace
    config: Any
    control_plane: Any
    _stack: ExitStack = field(repr=False, default_factory=ExitStack)

    @classmethod
    def start(cls, nf: NetworkFunction | str, *, config: Any = None, seed: int = 1,
              object_path: str | Path | None = None, configure: bool = True) -> NFEnv:
        """Create the namespace, load the NF's object and apply its default configuration.

        `object_path` loads another build of the NF (for example a user's variant); its maps
        must have the NF's names and layouts.
        """
        nf = get(nf) if isinstance(nf, str) else nf
        stack = ExitStack()
        try:
            namespace = NetNamespace.create(f"morpheus-{nf.name}")
            stack.callback(namespace.delete)
            for index in range(INTERFACE_INDEXES[0], INTERFACE_INDEXES[-1] + 1, 2):
                namespace.add_veth(f"port{index}", f"port{index + 1}",
                                   indexes=(index, index + 1))
            spec = read_for_kernel(object_path or nf.object_path)
            with namespace.entered():
                collection = stack.enter_context(
                    load_collection(spec, programs=[nf.program]))
                config = config if config is not None else nf.default_config(seed)
                control_plane = nf.control_plane(collection.maps)
                if configure:
                    control_plane.apply(config)
        except BaseException:
            stack.close()
            raise
        return cls(nf, spec, collection, namespace, config, control_plane, stack)

    @property
    def program(self) -> LoadedProgram:
        return self.collection.programs[self.nf.program]

    def run(self, frame: bytes, ingress_ifindex: int,
            program: LoadedProgram | None = None) -> TestRunResult:
        """One BPF_PROG_TEST_RUN of `frame` arriving on `ingress_ifindex`."""
        prog = program or self.program
        with self.namespace.entered():
            return prog.test_run(frame, ctx=xdp_ctx(ingress_ifindex, len(frame)))

    @contextmanager
    def entered(self) -> Iterator[None]:
        with self.namespace.entered():
            yield

    def reference(self) -> Any:
        """A fresh reference model of the NF under the current configuration."""
        return self.nf.reference(self.config)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
