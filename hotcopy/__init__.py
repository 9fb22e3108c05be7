"""The hot-copy agent (`cdp-agent`): point-in-time snapshots of live disks, changed-block
tracking, and upload of recovery points to a CDP server. Library entry point:
`hotcopy.backup.backup`."""
