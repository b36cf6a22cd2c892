"""The built-in backends, installed as ``xdrop.backends``: one module per framework."""
