"""One module per screen of the rescue TUI; dialogs are ModalScreens in dialogs.py."""
