"""One module per command group; :mod:`fvds.cli` composes them. Commands parse flags, build a
config or arguments, and make one library call."""
