"""The song record, its sidecar files, and the preprocessed-dataset schema."""
