"""The root of every exception voxgate raises on purpose."""


class VoxgateError(Exception):
    """Base class of all voxgate errors."""
