"""Image data: each real on-disk format written by hand, read back exactly; bad input is a
clear error; the batch source is deterministic, resumable and shards across processes."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from speechsq.data import build_batch_source
from speechsq.data.image_formats import ImageDataError
from speechsq.data.image_formats.celeba import CELEBA_MASK_PARTS
from speechsq.data.image_formats.idx import read_idx, write_idx
from speechsq.data.images import IMAGE_DATASETS, ImageBatchSource, iterate_batches, load_image_dataset

RNG = np.random.default_rng(123)


# ----- MNIST IDX ------------------------------------------------------------------------------
def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX written from the specification (not with the module under test)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_mnist(root, train_x, train_y, test_x, test_y, gz: bool, sub: str = "", dotted: bool = False):
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": train_x, "train-labels-idx1-ubyte": train_y,
        "t10k-images-idx3-ubyte": test_x, "t10k-labels-idx1-ubyte": test_y,
    }  # fmt: skip
    for name, array in files.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        payload = _idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (folder / name).write_bytes(payload)


@pytest.mark.parametrize("gz,sub,dotted", [(False, "", False), (True, "", False), (True, "raw", False), (False, "MNIST/raw", True)])
def test_mnist_idx_round_trip_and_validation_hold_out(tmp_path, gz, sub, dotted):
    train_x = RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    train_y = RNG.integers(0, 10, 7).astype(np.uint8)
    test_x = RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    test_y = RNG.integers(0, 10, 3).astype(np.uint8)
    _write_mnist(tmp_path, train_x, train_y, test_x, test_y, gz, sub, dotted)

    train = load_image_dataset("mnist", "train", root=tmp_path, valid_size=2)
    valid = load_image_dataset("mnist", "valid", root=tmp_path, valid_size=2)
    test = load_image_dataset("fashion_mnist", "test", root=tmp_path)  # same layout
    np.testing.assert_array_equal(train.pixels.take(np.arange(5))[:, 0], train_x[:5])
    np.testing.assert_array_equal(valid.pixels.take(np.arange(2))[:, 0], train_x[5:])  # the last ones
    np.testing.assert_array_equal(test.labels, test_y)
    batch = test.tensors(np.arange(3))
    torch.testing.assert_close(batch["images"][:, 0], torch.from_numpy(test_x).float() / 255)
    cat = load_image_dataset("mnist", "test", root=tmp_path, pixels="categorical")
    assert torch.equal(cat.tensors(np.arange(3))["images"], torch.from_numpy(test_x).long())
    assert cat.num_categories == 256


def test_idx_writer_matches_reader(tmp_path):
    array = RNG.integers(-1000, 1000, (2, 3, 4)).astype(np.int32)
    write_idx(tmp_path / "a.idx.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx.gz"), array)


def test_idx_bad_files_are_clear_errors(tmp_path):
    good = _idx_bytes(np.zeros((2, 4, 4), np.uint8))
    (tmp_path / "trunc").write_bytes(good[:-3])
    with pytest.raises(ImageDataError, match="truncated or corrupt"):
        read_idx(tmp_path / "trunc")
    (tmp_path / "magic").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ImageDataError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ImageDataError, match="cannot read IDX"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(ImageDataError, match="no t10k-images-idx3-ubyte"):
        load_image_dataset("mnist", "test", root=tmp_path)


def test_mnist_valid_size_larger_than_training_set(tmp_path):
    x = np.zeros((3, 28, 28), np.uint8)
    _write_mnist(tmp_path, x, np.zeros(3, np.uint8), x, np.zeros(3, np.uint8), gz=False)
    with pytest.raises(ImageDataError, match="cannot hold out 10000 validation images from 3"):
        load_image_dataset("mnist", "train", root=tmp_path)


# ----- CIFAR-10 -------------------------------------------------------------------------------
def _write_cifar(root, per_batch=2, row=3072):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = RNG.integers(0, 256, (per_batch, row), dtype=np.uint8)
        y = RNG.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": y, b"data": x, b"filenames": [b"x.png"] * per_batch}, f)
        data[name] = (x, y)
    return data


def test_cifar10_batches_round_trip(tmp_path):
    data = _write_cifar(tmp_path)
    train = load_image_dataset("cifar10", "train", root=tmp_path, valid_size=2)
    valid = load_image_dataset("cifar10", "valid", root=tmp_path, valid_size=2)
    test = load_image_dataset("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    assert (len(train), len(valid), len(test)) == (8, 2, 2)
    x5, y5 = data["data_batch_5"]
    np.testing.assert_array_equal(valid.labels, y5)  # the held-out images are the last batch
    # row layout: 1024 red, 1024 green, 1024 blue values, each row-major 32 x 32
    img = valid.pixels.take(np.array([1]))[0]
    assert img.shape == (3, 32, 32)
    for c, y, x in [(0, 0, 0), (1, 5, 7), (2, 31, 30)]:
        assert img[c, y, x] == x5[1, c * 1024 + y * 32 + x]


def test_cifar10_wrong_channel_count_and_bad_pickles(tmp_path):
    _write_cifar(tmp_path, row=4 * 1024)
    with pytest.raises(ImageDataError, match=r"4\.0 channels"):
        load_image_dataset("cifar10", "test", root=tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ImageDataError, match="not a CIFAR-10 python batch"):
        load_image_dataset("cifar10", "test", root=other)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ImageDataError, match="not a CIFAR-10 python directory"):
        load_image_dataset("cifar10", "test", root=empty)


# ----- CelebA ---------------------------------------------------------------------------------
GREEN, BLUE, RED = (0, 200, 0), (0, 0, 220), (230, 0, 0)


def _celeba_face(left_colour, right_colour) -> Image.Image:
    """178 x 218 like CelebA aligned; red outside the centre 140 x 140 crop, the crop's
    left and right halves in two colours."""
    img = np.zeros((218, 178, 3), np.uint8)
    img[:] = RED
    top, left = (218 - 140) // 2, (178 - 140) // 2
    img[top : top + 140, left : left + 70] = left_colour
    img[top : top + 140, left + 70 : left + 140] = right_colour
    return Image.fromarray(img)


def _write_celeba(root, partition=(0, 0, 1, 2), corrupt: int | None = None):
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True)
    lines = []
    for i, part in enumerate(partition, 1):
        name = f"{i:06d}.jpg"
        if i == corrupt:
            (folder / name).write_bytes(b"\xff\xd8 this is not a jpeg")
        else:
            _celeba_face(GREEN, BLUE).save(folder / name, quality=100, subsampling=0)  # 4:4:4, little bleeding
        lines.append(f"{name} {part}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba_official_split_crop_and_resize(tmp_path):
    _write_celeba(tmp_path)
    train = load_image_dataset("celeba", "train", root=tmp_path)
    assert (len(train), len(load_image_dataset("celeba", "valid", root=tmp_path)), len(load_image_dataset("celeba", "test", root=tmp_path))) == (2, 1, 1)
    img = train.pixels.take(np.array([0]))[0].astype(int)
    assert img.shape == (3, 64, 64)
    # no red from outside the centre crop survives (JPEG may blur the outermost pixel row);
    # the halves stay green | blue
    assert np.abs(img[:, 1:-1, 1:30] - np.array(GREEN)[:, None, None]).max() <= 8
    assert np.abs(img[:, 1:-1, 34:-1] - np.array(BLUE)[:, None, None]).max() <= 8
    # bilinear: the boundary columns are between the two colours
    assert 0 < img[1, 32, 31] < 200 and 0 < img[2, 32, 32] < 220


def test_file_cache_serves_decoded_images(tmp_path):
    _write_celeba(tmp_path)
    cached = load_image_dataset("celeba", "train", root=tmp_path, cache=True)
    first = cached.pixels.take(np.array([1, 0]))
    for path in (tmp_path / "img_align_celeba").glob("*.jpg"):
        path.unlink()
    np.testing.assert_array_equal(cached.pixels.take(np.array([0, 1])), first[::-1])  # from memory
    with pytest.raises(ImageDataError, match="no img_align_celeba"):  # a fresh load reads the disk
        load_image_dataset("celeba", "train", root=tmp_path)


def test_gray_celeba_is_256_categories_of_luma(tmp_path):
    _write_celeba(tmp_path)
    split = load_image_dataset("gray_celeba", "train", root=tmp_path, pixels="categorical")
    ids = split.tensors(np.array([0]))["images"][0]
    assert ids.shape == (64, 64) and split.num_categories == 256
    luma_green = 200 * 587 / 1000  # ITU-R 601-2, Pillow's "L"
    assert abs(int(ids[32, 5]) - luma_green) <= 3


def test_celeba_bad_directories_and_corrupt_files(tmp_path):
    with pytest.raises(ImageDataError, match="no img_align_celeba"):
        load_image_dataset("celeba", "train", root=tmp_path)
    _write_celeba(tmp_path / "a", corrupt=2)
    split = load_image_dataset("celeba", "train", root=tmp_path / "a")  # first image is fine
    with pytest.raises(ImageDataError, match=r"000002\.jpg: cannot decode image"):
        split.verify()
    (tmp_path / "a" / "list_eval_partition.txt").unlink()
    with pytest.raises(ImageDataError, match="list_eval_partition"):
        load_image_dataset("celeba", "train", root=tmp_path / "a")
    _write_celeba(tmp_path / "b")
    with open(tmp_path / "b" / "list_eval_partition.txt", "a") as f:
        f.write("999999.jpg 2\n")
    with pytest.raises(ImageDataError, match="1 images of the test split .* missing"):
        load_image_dataset("celeba", "test", root=tmp_path / "b")


# ----- CelebAMask-HQ --------------------------------------------------------------------------
def _block_ids(side=512) -> np.ndarray:
    """A label map of 8 x 8 blocks with ids 0..18 (cycled), so nearest 64 x 64 is exact."""
    block = side // 8
    ids = (np.arange(64) % 19).reshape(8, 8).astype(np.uint8)
    return ids.repeat(block, 0).repeat(block, 1)


def test_celeba_mask_combined_label_maps_nearest_resize(tmp_path):
    folder = tmp_path / "CelebAMask-HQ" / "CelebAMask-HQ-mask"
    folder.mkdir(parents=True)
    for i in range(10):
        Image.fromarray(_block_ids()).save(folder / f"{i}.png")
    split = load_image_dataset("celeba_mask", "train", root=tmp_path, pixels="categorical")
    assert split.num_categories == 19 and split.label_map and len(split) == 8
    ids = split.tensors(np.array([0]))["images"][0].numpy()
    np.testing.assert_array_equal(ids, (np.arange(64) % 19).reshape(8, 8).repeat(8, 0).repeat(8, 1))
    with pytest.raises(ImageDataError, match="label maps"):
        load_image_dataset("celeba_mask", "train", root=tmp_path, pixels="continuous")


def test_celeba_mask_part_masks_combined_in_official_order(tmp_path):
    anno = tmp_path / "CelebAMask-HQ-mask-anno"
    for index in (0, 1, 2, 3, 2001):
        folder = anno / str(index // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        skin = np.zeros((512, 512), np.uint8)
        skin[100:400, 100:400] = 255
        hair = np.zeros((512, 512), np.uint8)
        hair[:200, :] = 255  # overlaps the skin: hair (later in the order) wins
        Image.fromarray(skin).save(folder / f"{index:05d}_skin.png")
        Image.fromarray(hair).save(folder / f"{index:05d}_hair.png")
    split = load_image_dataset("celeba_mask", "test", root=tmp_path, pixels="categorical", size=None, test_fraction=0.4)
    ids = split.pixels.take(np.array([0]))[0]
    skin_id, hair_id = CELEBA_MASK_PARTS.index("skin") + 1, CELEBA_MASK_PARTS.index("hair") + 1
    assert ids[150, 150] == hair_id and ids[300, 300] == skin_id and ids[450, 450] == 0


def test_celeba_mask_partition_folders_of_the_sqvae_code(tmp_path):
    # sony/sqvae vision/util.py reads CelebAMask-HQ/{train,val,test}_label/<i>.png
    sizes = {"train": 5, "val": 2, "test": 3}
    for prefix, count in sizes.items():
        folder = tmp_path / "CelebAMask-HQ" / f"{prefix}_label"
        folder.mkdir(parents=True)
        for i in range(count):
            ids = np.full((512, 512), (i + 3 * len(prefix)) % 19, np.uint8)
            Image.fromarray(ids).save(folder / f"{i}.png")
    for split, prefix in (("train", "train"), ("valid", "val"), ("test", "test")):
        data = load_image_dataset("celeba_mask", split, root=tmp_path, pixels="categorical", partition="folders")
        assert len(data) == sizes[prefix]
        first = data.tensors(np.array([len(data) - 1]))["images"][0]
        assert first.shape == (64, 64) and int(first[0, 0]) == (len(data) - 1 + 3 * len(prefix)) % 19
    with pytest.raises(ImageDataError, match="no train_label/ folder"):
        load_image_dataset("celeba_mask", "train", root=tmp_path / "CelebAMask-HQ" / "test_label", pixels="categorical", partition="folders")
    with pytest.raises(ImageDataError, match="unknown partition 'official'"):
        load_image_dataset("celeba_mask", "train", root=tmp_path, pixels="categorical", partition="official")


def test_label_maps_out_of_range_and_colour_coded_are_errors(tmp_path):
    folder = tmp_path / "CelebAMask-HQ-mask"
    folder.mkdir()
    bad = _block_ids()
    bad[0, 0] = 25
    for i in range(10):
        Image.fromarray(bad).save(folder / f"{i}.png")
    with pytest.raises(ImageDataError, match=r"category ids \[25\] are outside \[0, 19\)"):
        load_image_dataset("celeba_mask", "train", root=tmp_path, pixels="categorical")
    for i in range(10):
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / f"{i}.png")
    with pytest.raises(ImageDataError, match="single-channel"):
        load_image_dataset("celeba_mask", "train", root=tmp_path, pixels="categorical")
    with pytest.raises(ImageDataError, match="not a CelebAMask-HQ directory"):
        load_image_dataset("celeba_mask", "train", root=tmp_path / "CelebAMask-HQ-mask", pixels="categorical")


# ----- npz and image folders ------------------------------------------------------------------
def test_npz_keras_layout_and_bad_arrays(tmp_path):
    x_train = RNG.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    x_test = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.arange(10), x_test=x_test, y_test=np.arange(4))
    train = load_image_dataset("npz", "train", root=tmp_path / "d.npz", valid_fraction=0.2)
    valid = load_image_dataset("npz", "valid", root=tmp_path / "d.npz", valid_fraction=0.2)
    test = load_image_dataset("npz", "test", root=tmp_path / "d.npz")
    assert (len(train), len(valid), len(test)) == (8, 2, 4)
    np.testing.assert_array_equal(test.pixels.take(np.arange(4)), x_test.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(valid.labels, [8, 9])

    np.savez(tmp_path / "c5.npz", x_test=RNG.integers(0, 256, (4, 8, 8, 5), dtype=np.uint8))
    with pytest.raises(ImageDataError, match="1 or 3 channels, got 5"):
        load_image_dataset("npz", "test", root=tmp_path / "c5.npz")
    np.savez(tmp_path / "f.npz", x_test=np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ImageDataError, match="integer pixel values"):
        load_image_dataset("npz", "test", root=tmp_path / "f.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ImageDataError, match="cannot read .npz"):
        load_image_dataset("npz", "test", root=tmp_path / "junk.npz")


def test_image_folder_with_class_subfolders(tmp_path):
    for cls, value in (("cats", 10), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for i in range(10):
            Image.fromarray(np.full((12, 12), value, np.uint8)).save(tmp_path / cls / f"{i}.png")
    for split in ("train", "valid", "test"):
        s = load_image_dataset("image_folder", split, root=tmp_path, mode="L")
        pixels = s.pixels.take(np.arange(len(s)))
        # every image carries its folder's label
        assert np.all(pixels[:, 0, 0, 0] == np.where(s.labels == 0, 10, 200))
    Image.fromarray(np.zeros((20, 12), np.uint8)).save(tmp_path / "dogs" / "odd.png")
    s = load_image_dataset("image_folder", "train", root=tmp_path, mode="L", valid_fraction=0, test_fraction=0)
    with pytest.raises(ImageDataError, match="pass size=... to resize"):
        s.verify()
    resized = load_image_dataset("image_folder", "train", root=tmp_path, mode="L", size=8, valid_fraction=0, test_fraction=0)
    resized.verify()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageDataError, match="no image files"):
        load_image_dataset("image_folder", "train", root=tmp_path / "empty")


# ----- digits, options, registry --------------------------------------------------------------
def test_digits_are_exact_and_split_disjointly():
    from sklearn.datasets import load_digits

    digits = load_digits()
    splits = {s: load_image_dataset("digits", s) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [1297, 200, 300]
    train = splits["train"].pixels.take(np.arange(1297))[:, 0]
    # each training image is some digit repeated into 2 x 2 blocks (no interpolation)
    np.testing.assert_array_equal(train[:, ::2, ::2], train[:, 1::2, 1::2])
    originals = {d.astype(np.uint8).tobytes() for d in digits.images}
    assert all(img[::2, ::2].tobytes() in originals for img in train[:50])
    x = splits["test"].tensors(np.arange(300))["images"]
    assert x.shape == (300, 1, 16, 16) and float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert torch.allclose(x * 16, (x * 16).round())  # levels / 16
    cat = load_image_dataset("digits", "test", pixels="categorical")
    assert cat.num_categories == 17 and int(cat.tensors(np.arange(300))["images"].max()) == 16


def test_loader_options_and_pixel_kinds_are_checked(tmp_path):
    assert {"digits", "mnist", "fashion_mnist", "cifar10", "celeba", "gray_celeba", "celeba_mask", "image_folder", "npz"} <= set(IMAGE_DATASETS.names())
    with pytest.raises(ImageDataError, match="does not take option"):
        load_image_dataset("digits", "train", size=3)
    with pytest.raises(ImageDataError, match="give its directory"):
        load_image_dataset("mnist", "train")
    with pytest.raises(ImageDataError, match="does not exist"):
        load_image_dataset("mnist", "train", root=tmp_path / "nope")
    with pytest.raises(ImageDataError, match="split must be"):
        load_image_dataset("digits", "dev")
    x = RNG.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", x_test=x)
    with pytest.raises(ImageDataError, match="categorical pixels need one channel"):
        load_image_dataset("npz", "test", root=tmp_path / "rgb.npz", pixels="categorical")
    with pytest.raises(ImageDataError, match="unknown image dataset 'imagenet'"):
        load_image_dataset("imagenet", "train")


# ----- the batch source -----------------------------------------------------------------------
def _ids(batch) -> list[int]:
    return batch["labels"].tolist()


def test_batch_source_epochs_resume_and_shards():
    split = load_image_dataset("digits", "valid")  # 200 images
    split.labels = np.arange(len(split))  # label = index, to see which images came
    source = ImageBatchSource(split, batch_size=32, seed=5)
    epoch = [i for _ in range(source.batches_per_epoch) for i in _ids(source.next_batch())]
    assert len(set(epoch)) == len(epoch) == 6 * 32  # no repeats within an epoch
    state = source.state_dict()
    after = [_ids(source.next_batch()) for _ in range(4)]
    resumed = ImageBatchSource(split, batch_size=32, seed=5)
    resumed.load_state_dict(state)
    assert [_ids(resumed.next_batch()) for _ in range(4)] == after
    assert source.epoch == 1  # wrapped into the second epoch

    one = ImageBatchSource(split, batch_size=32, seed=7)
    shards = [ImageBatchSource(split, batch_size=16, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(8):
        whole = _ids(one.next_batch())
        parts = [_ids(s.next_batch()) for s in shards]
        assert parts[0] + parts[1] == whole and not set(parts[0]) & set(parts[1])
    with pytest.raises(ImageDataError, match="saved for"):
        ImageBatchSource(split, batch_size=32, seed=6).load_state_dict(state)


def test_hflip_transform_and_registry_source():
    split = load_image_dataset("digits", "valid")
    source = ImageBatchSource(split, batch_size=40, seed=1, transforms=("hflip",))
    plain = ImageBatchSource(split, batch_size=40, seed=1)
    a, b = source.next_batch()["images"], plain.next_batch()["images"]
    flipped = torch.tensor([torch.equal(x, y.flip(-1)) and not torch.equal(x, y) for x, y in zip(a, b)])
    same = torch.tensor([torch.equal(x, y) for x, y in zip(a, b)])
    assert bool((flipped | same).all()) and 0 < int(flipped.sum()) < 40

    with pytest.raises(ImageDataError, match="unknown image transform"):
        ImageBatchSource(split, batch_size=4, transforms=("rotate",))
    src = build_batch_source({"name": "images", "dataset": "digits", "pixels": "categorical", "batch_size": 8}, rank=1, world_size=2, seed=0)
    assert src.batch_size == 4 and src.model_overrides() == {"channels": 1, "num_categories": 17}
    assert sum(b["images"].shape[0] for b in iterate_batches(split, 64)) == len(split)


def test_hflip_flips_each_image_with_probability_one_half():
    from speechsq.data.images import random_horizontal_flip

    raw = np.arange(400 * 6).reshape(400, 1, 2, 3)
    out = random_horizontal_flip(raw, np.random.default_rng(5))
    expected = np.random.default_rng(5).random(400) < 0.5  # one uniform per image, flipped below 1/2
    flipped = np.array([np.array_equal(o, r[..., ::-1]) for o, r in zip(out, raw)])
    assert np.array_equal(flipped, expected)
    assert np.array_equal(out[~expected], raw[~expected])


def test_hflip_draws_are_per_process_and_per_batch():
    """Process ``rank`` flips with its own generator, seeded (seed, epoch, batch number, rank, 1):
    two processes do not flip the same batch positions, and a batch's flips are its own."""
    split = load_image_dataset("digits", "valid")
    for rank in (0, 1):
        source = ImageBatchSource(split, batch_size=20, seed=3, rank=rank, world_size=2, transforms=("hflip",))
        plain = ImageBatchSource(split, batch_size=20, seed=3, rank=rank, world_size=2)
        for batch_number in (1, 2):
            got, unflipped = source.next_batch()["images"], plain.next_batch()["images"]
            flip = torch.as_tensor(np.random.default_rng([3, 0, batch_number, rank, 1]).random(20) < 0.5)
            expected = torch.where(flip[:, None, None, None], unflipped.flip(-1), unflipped)
            assert torch.equal(got, expected)
    masks = [np.random.default_rng([3, 0, 1, rank, 1]).random(20) < 0.5 for rank in (0, 1)]
    assert not np.array_equal(*masks)  # the check above can tell the ranks apart
