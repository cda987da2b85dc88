"""Wire knowledge of the Gemini Developer API: paths, errors, streams."""
