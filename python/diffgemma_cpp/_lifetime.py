"""Context-manager and finaliser plumbing shared by the objects that own C handles."""


class Closeable:
    """Subclasses define an idempotent ``close()``; ``with`` and garbage collection call it."""

    def close(self) -> None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
