"""The `morpheus` command line."""
