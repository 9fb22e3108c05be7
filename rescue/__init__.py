"""The rescue restore engine: discover local disks, plan a restore of a recovery point onto
them, and execute the plan (partition tables, LVM, swap, streamed volumes, verification).
The CLI (`rescue`) and the TUI are thin clients of this engine: see rescue.engine."""
