"""Per-run routing of Bluesky documents: dispatch, frame assembly, the raw-data path."""
