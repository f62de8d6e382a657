"""The one error type of the image data layer."""

from speechsq.errors import SpeechsqError


class ImageDataError(SpeechsqError, ValueError):
    """Files on disk (or an array) that do not match the image format that was asked for:
    missing files, bad headers, truncated or corrupt images, wrong channel counts,
    out-of-range category ids."""
