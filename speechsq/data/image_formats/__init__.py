"""Readers for the on-disk formats of the image datasets (MNIST IDX, CIFAR-10 python
batches, CelebA / CelebAMask-HQ folders, folders of images, .npz archives).

Each reader returns plain numpy arrays; :mod:`speechsq.data.images` turns them into
splits and batches. Every reader raises :class:`ImageDataError` with the offending path
when the files on disk do not match the format it expects.
"""

from speechsq.data.image_formats.errors import ImageDataError

__all__ = ["ImageDataError"]
