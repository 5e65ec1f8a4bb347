"""Chat data: record formats (formats), chat templates and encoding with masks (template),
batches of labelled examples, padded or packed (batches), and generation (generate)."""
