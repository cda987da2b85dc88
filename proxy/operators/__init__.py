"""The operator surface: admin API, admin CLI, status page and its assets, demo."""
