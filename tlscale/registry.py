"""One small registry type for every extension point (tasks, strategies, poolings...)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from tlscale.errors import ConfigError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = item
            return item

        return add

    def unregister(self, name: str) -> None:
        """Take a registration back (a plugin's tests; a notebook redefining a task)."""
        self._items.pop(name, None)

    def unknown(self, name: str) -> str:
        return (
            f"unknown {self.kind} '{name}'.{did_you_mean(name, self._items)}"
            f" Available: {', '.join(sorted(self._items))}"
        )

    def get(self, name: str, field: str | None = None) -> T:
        if name not in self._items:
            raise ConfigError((f"{field}: " if field else "") + self.unknown(name))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
