"""xdrop inside the training loops of other libraries: one module per library, each importing
that library (``xdrop.integrations.transformers`` imports Hugging Face ``transformers`` and
torch). Importing this package imports none of them."""
