"""`make demo` / `cdp-demo`: the product end to end on one machine, with image files."""
