"""Processes' loops: the fan-out consumer and the dispatcher."""
