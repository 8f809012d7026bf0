"""In-memory BPF maps for the switch and router control-plane tests (no kernel)."""

from __future__ import annotations

from collections.abc import Iterator

BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2


class MapFull(OSError):
    """A hash map has max_entries entries (the kernel's E2BIG)."""


class FakeMap:
    """A dict behind the MapLike protocol, with the kernel's per-type behaviour where tests
    depend on it: arrays have every slot (zero-filled, never deleted), per-CPU arrays return
    one value per CPU, hash maps honour max_entries and the NOEXIST / EXIST flags."""

    def __init__(
        self,
        name: str,
        kind: str = "hash",
        *,
        max_entries: int = 1 << 20,
        value_size: int = 0,
        cpus: int = 2,
    ) -> None:
        self.name = name
        self.kind = kind
        self.max_entries = max_entries
        self.value_size = value_size
        self.cpus = cpus
        self.store: dict[bytes, bytes | list[bytes]] = {}
        self.writes = 0
        if kind in ("array", "percpu_array"):
            for i in range(max_entries):
                zero = bytes(value_size)
                self.store[i.to_bytes(4, "little")] = (
                    [zero] * cpus if kind == "percpu_array" else zero
                )

    @property
    def is_array(self) -> bool:
        return self.kind in ("array", "percpu_array")

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        key, value = bytes(key), bytes(value)
        self.writes += 1
        if self.is_array:
            if key not in self.store:
                raise IndexError(f"{self.name}: index out of range")
            if flags == BPF_NOEXIST:
                raise FileExistsError(f"{self.name}: array slots always exist")
            self.store[key] = [value] * self.cpus if self.kind == "percpu_array" else value
            return
        exists = key in self.store
        if flags == BPF_NOEXIST and exists:
            raise FileExistsError(f"{self.name}: key exists")
        if flags == BPF_EXIST and not exists:
            raise KeyError(key)
        if not exists and len(self.store) >= self.max_entries:
            raise MapFull(f"{self.name}: full")
        self.store[key] = value

    def delete(self, key: bytes) -> None:
        if self.is_array:
            raise PermissionError(f"{self.name}: array entries cannot be deleted")
        self.writes += 1
        del self.store[bytes(key)]  # KeyError if missing, as the protocol says

    def lookup(self, key: bytes) -> bytes | list[bytes] | None:
        value = self.store.get(bytes(key))
        return list(value) if isinstance(value, list) else value

    def keys(self) -> Iterator[bytes]:
        return iter(list(self.store))
