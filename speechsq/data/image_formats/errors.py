"""The one error type of the image data layer."""


class ImageDataError(ValueError):
    """Files on disk (or an array) that do not match the image format that was asked for:
    missing files, bad headers, truncated or corrupt images, wrong channel counts,
    out-of-range category ids."""
