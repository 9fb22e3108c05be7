"""Shared core of the CDP appliance: recovery-point format, crypto, index, layout model,
wire types and the HTTP client. Imported by the agent (hotcopy), the CDP server and the
rescue environment; imports nothing from them, nor any CLI, TUI or device code."""

__version__ = "0.1.0"
