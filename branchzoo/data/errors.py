"""The errors of branchzoo.data."""


class DatasetNotFoundError(FileNotFoundError):
    """No local files and no download for a dataset; the message says how to fix it."""
