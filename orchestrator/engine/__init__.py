"""The only package that imports docker: the Engine and its test double."""
