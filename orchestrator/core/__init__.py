"""Pure code: container specs, outcome and status, stats maths, output capture, redaction.

Nothing here imports docker or redis; every function is tested with plain tables.
"""
