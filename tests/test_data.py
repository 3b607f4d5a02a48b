"""kdnb.data: the embedded data sets, the seeded validation split, normalisation from the
training file only, and the torchvision loaders run on tiny files in each set's real format."""
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from kdnb import data
from kdnb.data import load


def row_set(x):
    return {bytes(r.numpy().tobytes()) for r in x.contiguous()}


def class_counts(y, classes=10):
    return torch.bincount(y, minlength=classes)


# --- embedded data sets -------------------------------------------------------------------------

def test_digits_shapes_and_classes(digits):
    d = digits
    assert (d.name, d.classes, d.shape) == ("digits", 10, (1, 8, 8))
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and len(x) == len(y)
        assert set(y.tolist()) == set(range(10))
    sizes = d.sizes()
    assert sum(sizes.values()) == 1797  # all of scikit-learn's digits, each used once
    assert sizes["val"] == pytest.approx(0.1 * (sizes["train"] + sizes["val"]), abs=10)
    assert sizes["test"] == pytest.approx(0.2 * 1797, abs=10)


def test_digits_splits_are_disjoint(digits):
    # The 1797 digit images are all distinct, so row identity tells samples apart.
    train, val, test = row_set(digits.x_train), row_set(digits.x_val), row_set(digits.x_test)
    assert len(train) == len(digits.x_train) and len(val) == len(digits.x_val)
    assert not train & val and not train & test and not val & test


def test_mnist1d_shapes_and_classes():
    d = load("mnist1d")
    assert (d.classes, d.shape) == (10, (1, 40))
    assert d.x_train.shape[1:] == d.x_val.shape[1:] == d.x_test.shape[1:] == (1, 40)
    sizes = d.sizes()
    assert sizes == {"train": 4000, "val": 2000, "test": 10000}
    assert set(d.y_train.tolist()) == set(range(10))
    assert not row_set(d.x_train) & row_set(d.x_val)
    assert not row_set(d.x_train) & row_set(d.x_test)


def test_validation_split_is_seeded(digits):
    same = load("digits", seed=0)
    assert torch.equal(same.x_val, digits.x_val) and torch.equal(same.y_val, digits.y_val)
    other = load("digits", seed=1)
    assert len(other.x_val) == len(digits.x_val)
    assert row_set(other.x_val) != row_set(digits.x_val)
    # The test split does not move with the seed: runs with different seeds stay comparable.
    assert torch.equal(other.x_test, digits.x_test)
    # Train ∪ val is the same pool for every seed.
    assert row_set(torch.cat([other.x_train, other.x_val])) == row_set(torch.cat([digits.x_train, digits.x_val]))


def test_validation_split_is_stratified(digits):
    pool = class_counts(torch.cat([digits.y_train, digits.y_val]))
    val = class_counts(digits.y_val)
    assert ((val - 0.1 * pool).abs() <= 1).all(), (val, pool)


def test_normalised_with_training_statistics(digits):
    pool = torch.cat([digits.x_train, digits.x_val])
    assert pool.mean().item() == pytest.approx(0, abs=1e-5)
    assert pool.std().item() == pytest.approx(1, abs=1e-4)
    # The test split is scaled with the training statistics, not its own, so its mean is not
    # exactly 0 (the torchvision test below checks the exact statistics on controlled files).
    assert abs(digits.x_test.mean().item()) > 1e-3


def test_fraction_subset_is_stratified_and_seeded(digits):
    half = load("digits", fraction=0.5)
    # Only the training split shrinks; validation and test stay the same.
    assert torch.equal(half.x_val, digits.x_val) and torch.equal(half.x_test, digits.x_test)
    full, part = class_counts(digits.y_train), class_counts(half.y_train)
    assert ((part - 0.5 * full).abs() <= 1).all(), (part, full)
    assert row_set(half.x_train) <= row_set(digits.x_train)
    again = digits.subset(0.5, seed=0)
    assert torch.equal(again.x_train, half.x_train)
    assert not torch.equal(digits.subset(0.5, seed=1).x_train, half.x_train)
    # At least one sample of each class survives a tiny fraction.
    assert set(digits.subset(0.001).y_train.tolist()) == set(range(10))
    assert digits.subset(1.0) is digits


@pytest.mark.parametrize("kwargs, match", [
    ({"fraction": 0}, r"fraction must be in \(0, 1\]"),
    ({"fraction": 1.5}, r"fraction must be in \(0, 1\]"),
    ({"val_fraction": 0}, r"val_fraction must be in \(0, 1\)"),
    ({"val_fraction": 1}, r"val_fraction must be in \(0, 1\)"),
])
def test_bad_fractions(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load("digits", **kwargs)


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as err:
        load("imagenet")
    msg = str(err.value)
    assert "imagenet" in msg and all(name in msg for name in data.NAMES)


def test_split_name_checked(digits):
    with pytest.raises(ValueError, match="split must be one of"):
        digits.split("validation")


# --- torchvision loaders on tiny files in the real on-disk formats ------------------------------

def tiny_images(n, c, h, w, low, high, seed):
    """uint8 images with values in [low, high) (per channel offset so channels differ) and labels
    cycling over the 10 classes; pixel (0, 0, 0) holds the sample number so every image is unique."""
    rng = np.random.default_rng(seed)
    x = rng.integers(low, high - 10 * c, size=(n, c, h, w)).astype(np.uint8)
    x += (10 * np.arange(c, dtype=np.uint8))[None, :, None, None]
    x[:, 0, 0, 0] = np.arange(n, dtype=np.uint8) + low
    y = np.arange(n) % 10
    return x, y


def write_idx(path, array):
    """The MNIST idx-ubyte format: big-endian magic (0, 0, uint8 type 0x08, ndim), dims, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.tobytes())


def write_mnist_like(root, folder, train, test):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x[:, 0])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)


def write_cifar10(root, train, test):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    x, y = train
    # Five training batches, as in the real archive: rows are flattened CHW, labels a list.
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5)):
        with open(folder / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"batch_label": f"training batch {i + 1} of 5", "data": x[part].reshape(len(part), -1),
                         "labels": y[part].tolist(), "filenames": [f"{j}.png" for j in part]}, f)
    x, y = test
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": x.reshape(len(y), -1), "labels": y.tolist(),
                     "filenames": [f"{j}.png" for j in range(len(y))]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_cases_per_batch": 10000, "num_vis": 3072}, f)


def write_svhn(root, train, test):
    import scipy.io
    root.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in (("train", train), ("test", test)):
        # The .mat files hold X as (H, W, C, N) and y as (N, 1) with the digit 0 stored as label 10.
        labels = np.where(y == 0, 10, y).astype(np.uint8)[:, None]
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": labels})


def existence_only(monkeypatch, module):
    """CIFAR-10 and SVHN verify the MD5 of the full official files, which tiny stand-ins can never
    match. Replace only that checksum step (in the torchvision module that calls it) by an existence
    check; opening, unpickling / loadmat and reshaping still run through torchvision's own code."""
    import torchvision.datasets.utils as tvu
    real = tvu.check_integrity
    monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: real(fpath))


FORMATS = {
    # name: (writer, (C, H, W), torchvision module whose checksum step is relaxed or None)
    "mnist": (lambda root, tr, te: write_mnist_like(root, "MNIST", tr, te), (1, 28, 28), None),
    "fashion_mnist": (lambda root, tr, te: write_mnist_like(root, "FashionMNIST", tr, te), (1, 28, 28), None),
    "cifar10": (write_cifar10, (3, 32, 32), "torchvision.datasets.cifar"),
    "svhn": (write_svhn, (3, 32, 32), "torchvision.datasets.svhn"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_torchvision_loader_reads_real_format(name, tmp_path, monkeypatch):
    write, (c, h, w), module = FORMATS[name]
    if module:
        import importlib
        existence_only(monkeypatch, importlib.import_module(module))
    # Train images dark, test images bright: normalising the test split by its own statistics
    # (instead of the training file's) would be caught below.
    train = tiny_images(60, c, h, w, low=0, high=120, seed=1)
    test = tiny_images(20, c, h, w, low=130, high=250, seed=2)
    write(tmp_path, train, test)

    d = load(name, root=tmp_path, seed=0)
    assert (d.name, d.classes, d.shape) == (name, 10, (c, h, w))
    assert d.sizes() == {"train": 50, "val": 10, "test": 20}
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64

    raw_x = torch.from_numpy(train[0]).float() / 255
    raw_test = torch.from_numpy(test[0]).float() / 255
    mean = raw_x.mean((0, 2, 3), keepdim=True)
    std = raw_x.std((0, 2, 3), keepdim=True)
    expected = (raw_x - mean) / std
    assert torch.allclose(d.x_test, (raw_test - mean) / std, atol=1e-5)
    assert torch.equal(d.y_test, torch.from_numpy(test[1]))

    # Every training-file image lands in exactly one of train / val, with its own label.
    got_x, got_y = torch.cat([d.x_train, d.x_val]), torch.cat([d.y_train, d.y_val])
    match = torch.cdist(got_x.flatten(1), expected.flatten(1)).argmin(1)
    assert sorted(match.tolist()) == list(range(60))
    assert torch.allclose(got_x, expected[match], atol=1e-5)
    assert torch.equal(got_y, torch.from_numpy(train[1])[match])
    assert class_counts(d.y_val).tolist() == [1] * 10

    # A different seed carves a different validation split from the same files.
    other = load(name, root=tmp_path, seed=1)
    assert row_set(other.x_val) != row_set(d.x_val)


@pytest.mark.parametrize("name", data.TORCHVISION)
def test_missing_files_raise_one_clear_error(name, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError) as err:
        load(name, root=empty)
    msg = str(err.value)
    assert repr(name) in msg and str(empty) in msg
    assert f"kdnb download {name}" in msg and "download=True" in msg

    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load(name, root=missing)
    msg = str(err.value)
    assert name in msg and str(missing) in msg and "download=True" in msg


def test_default_root_comes_from_kdnb_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KDNB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load("mnist")


# --- notMNIST: a folder of letter images, read through ImageFolder -------------------------------

def write_notmnist(root, per_class=5, letters="ABCDEFGHIJ", folder="notMNIST_small", size=28):
    """Tiny grey PNGs, one sub-folder per letter; pixel (0, 0) holds the class, (0, 1) the sample."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for c, letter in enumerate(letters):
        (root / folder / letter).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size), dtype=np.uint8)
            pixels[0, 0], pixels[0, 1] = 20 * c, i
            Image.fromarray(pixels, mode="L").save(root / folder / letter / f"{letter}{i}.png")
    return root / folder


def test_notmnist_reads_a_folder_of_letters(tmp_path):
    write_notmnist(tmp_path, per_class=10)
    d = load("notmnist", root=tmp_path, seed=0)
    assert (d.name, d.classes, d.shape) == ("notmnist", 10, (1, 28, 28))
    assert d.sizes() == {"train": 70, "val": 10, "test": 20}  # a fixed stratified 20 % test split
    assert class_counts(d.y_test).tolist() == [2] * 10
    # Each image keeps its own label (its class is written in pixel (0, 0)), after normalisation.
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        raw = x[:, 0, 0, 0] * d.std.flatten() + d.mean.flatten()
        assert torch.allclose(raw * 255, 20 * y.float(), atol=1e-3)
    again = load("notmnist", root=tmp_path, seed=1)
    assert torch.equal(again.x_test, d.x_test) and row_set(again.x_val) != row_set(d.x_val)
    assert "notmnist" in data.NAMES


def test_notmnist_skips_unreadable_files_and_says_how_many(tmp_path):
    folder = write_notmnist(tmp_path, per_class=3)
    (folder / "C" / "broken.png").write_bytes(b"not a png")  # notMNIST_small ships a few of these
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\) of 31, e\.g\. .*broken\.png"):
        d = load("notmnist", root=tmp_path)
    assert sum(d.sizes().values()) == 30


@pytest.mark.parametrize("layout, error, match", [
    ("missing", FileNotFoundError, r"data set 'notmnist' not found: no folder notMNIST, notMNIST_small, "
                                   r"notMNIST_large under '.*'; expected one sub-folder per letter A, B, …, J"),
    ("empty", FileNotFoundError, r"notMNIST folder '.*notMNIST' is empty; expected one sub-folder per letter"),
    ("files only", ValueError, r"must hold exactly the class folders A, B, C, D, E, F, G, H, I, J; found no "
                               r"folders, only files \(a.png\)"),
    ("digits", ValueError, r"must hold exactly the class folders A, .*, J; found folders 0, 1, 2, 3, 4, 5, 6, 7, "
                           r"8, 9$"),
    ("five letters", ValueError, r"found folders A, B, C, D, E$"),
    ("one level down", ValueError, r"found folders notMNIST_small; it looks like the data set is one level "
                                   r"down, in '.*notMNIST/notMNIST_small'"),
    ("a class without images", FileNotFoundError, r"has no images in class folders D; expected"),
    ("wrong size", ValueError, r"notMNIST images must be 28×28, got 32×32 in '.*A0\.png'"),
])
def test_notmnist_layout_errors_say_what_was_found_and_what_is_expected(tmp_path, layout, error, match):
    from PIL import Image
    root = tmp_path / "data"
    root.mkdir()
    if layout == "empty":
        (root / "notMNIST").mkdir()
    elif layout == "files only":
        (root / "notMNIST").mkdir()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "notMNIST" / "a.png")
    elif layout == "digits":
        write_notmnist(root, 1, letters="0123456789", folder="notMNIST")
    elif layout == "five letters":
        write_notmnist(root, 1, letters="ABCDE", folder="notMNIST")
    elif layout == "one level down":
        write_notmnist(root / "notMNIST", 1)
    elif layout == "a class without images":
        folder = write_notmnist(root, 1, folder="notMNIST")
        (folder / "D" / "D0.png").unlink()
    elif layout == "wrong size":
        write_notmnist(root, 1, folder="notMNIST", size=32)
    with pytest.raises(error, match=match):
        load("notmnist", root=root)


def test_notmnist_has_no_download(tmp_path):
    with pytest.raises(ValueError, match=r"notmnist can't be downloaded by torchvision; get it by hand"):
        load("notmnist", root=tmp_path, download=True)


# The bits of the embedded data sets, as this book was checked against them: every cache key
# names the data by such a hash, so if these change, every result in the book changes too.
DATA_HASHES = {"mnist1d": "047ec82290d105de", "digits": "1827385afb1f590a"}
HASH_SCRIPT = """
import sys, torch
torch.set_num_threads(int(sys.argv[1]))
from kdnb import data, store
for n in ("mnist1d", "digits"):
    d = data.load(n)
    print(n, store.tensor_hash(d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test, d.mean, d.std))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_embedded_data_are_bit_stable_whatever_the_thread_count(threads, tmp_path):
    """Generated cold (an empty cache) on 1 and on 2 threads, MNIST-1D and digits hash to the
    constants above: the data never depends on the machine's load or the profile's threads."""
    import subprocess
    import sys
    env = {**os.environ, "KDNB_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", HASH_SCRIPT, str(threads)], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert dict(line.split() for line in out.strip().splitlines()) == DATA_HASHES


def test_mnist1d_evaluates_on_large_generated_splits():
    from kdnb import data
    d = data.load("mnist1d")
    assert d.sizes() == {"train": 4000, "val": 2000, "test": 10000}
    assert not torch.equal(d.x_val[:5], d.x_train[:5])
