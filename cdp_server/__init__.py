"""The CDP server: stores recovery points, serves restores, applies retention, collects
garbage and verifies stored objects (docs/API.md)."""
