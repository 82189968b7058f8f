"""The crash-safe session log: its format, the writer (``--output record:DIR``) and the replay reader (``file:DIR``)."""
