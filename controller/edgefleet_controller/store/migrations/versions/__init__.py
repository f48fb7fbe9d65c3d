"""Migration scripts, one per schema change; revision ids are the file's number."""
