"""figures: one function per paper-style figure; each returns a matplotlib Figure."""
__all__: list[str] = []
