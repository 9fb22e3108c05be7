"""Small widgets of the rescue TUI."""
