"""The built-in backends, installed as ``xdrop.backends``: one module per framework."""

if __name__ != "xdrop.backends":  # one module per backend file: never also `backends.numpy`
    raise ImportError(f"backends/ is the package xdrop.backends; import that, not {__name__!r}")
