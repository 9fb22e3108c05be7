"""`rescue tui`: the full-screen restore console (Textual), a thin client of rescue.engine."""
