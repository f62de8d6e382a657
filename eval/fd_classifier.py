"""The offline feature space for Fréchet distances: a small CNN trained on the dataset.

The Inception weights of the standard FID cannot be downloaded on every machine. Without
them, speechsq measures Fréchet distances in the feature space of a classifier that it
trains itself on the class labels of the dataset's training split (scikit-learn's digits
ship with the package, so the default recipe needs nothing else). Every output labels
these numbers "FD (speechsq classifier, not comparable to published FID)": they rank
models on one dataset, they are not FIDs.

Network (:class:`FeatureNet`): Conv3(32) ReLU, Conv3(64, stride 2) ReLU, Conv3(64,
stride 2) ReLU, global average pooling -> 64 features (the analogue of Inception's pool3)
-> Linear(classes). Trained with Adam (lr 1e-3, batch 64, ``steps`` steps, seed 0): on the
digits about 10-20 s on one CPU core. The validation-split accuracy is stored with it.

Cache directory (completion protocol, kind ``fd_classifier``)::

    classifier.pt    the state dict (read back with torch.load(weights_only=True))
    complete.json    the signature of the data it was trained on, its accuracy

A directory trained on other data (dataset, split sizes, image shape, pixels) is a clear
error, not a silent reuse.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechsq import completion
from speechsq.errors import MismatchError
from speechsq.eval.fid import OFFLINE_LABEL, FidError, images_as_float

log = logging.getLogger(__name__)

KIND = "fd_classifier"
PRODUCER = "speechsq.eval.fd_classifier"
ARCHITECTURE = "conv32-conv64s2-conv64s2-gap64-v1"


class FeatureNet(nn.Module):
    """Small CNN; ``features`` gives the 64 pooled features the FD is measured on."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.classify = nn.Linear(width, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.classify(self.features(x))


def split_signature(split) -> dict:
    """What the classifier's features depend on: the data it was trained on."""
    return {
        "dataset": split.dataset,
        "images": len(split),
        "image_shape": list(split.pixels.sample_shape),
        "pixels": split.kind,
        "num_values": int(split.num_values),
        "label_map": bool(split.label_map),
        "architecture": ARCHITECTURE,
    }


def _split_tensors(split) -> tuple[Tensor, Tensor]:
    if split.labels is None:
        raise FidError(
            f"{split.dataset}/{split.split} has no class labels to train the offline FD classifier on; "
            "give the Inception weights file for the standard FID instead"
        )
    batch = split.tensors(np.arange(len(split)))
    x = images_as_float(batch["images"], split.kind, split.num_values, split.label_map)
    return x, batch["labels"]


def accuracy(net: FeatureNet, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    return float((pred == y).double().mean())


def train_classifier(train_split, valid_split=None, steps: int = 600, batch_size: int = 64, lr: float = 1e-3,
                     seed: int = 0) -> tuple[FeatureNet, dict]:  # fmt: skip
    """Train :class:`FeatureNet` on a labelled image split; -> (net, info with accuracies)."""
    x, y = _split_tensors(train_split)
    num_classes = int(y.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = FeatureNet(x.shape[1], num_classes)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    from tqdm.auto import tqdm

    for _ in tqdm(range(steps), desc="FD classifier", leave=False, mininterval=2.0):
        pick = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=generator)
        loss = F.cross_entropy(net(x[pick]), y[pick])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    info = {"num_classes": num_classes, "in_channels": int(x.shape[1]), "steps": steps, "seed": seed,
            "train_accuracy": accuracy(net, x, y)}  # fmt: skip
    if valid_split is not None and valid_split.labels is not None:
        vx, vy = _split_tensors(valid_split)
        info["valid_accuracy"] = accuracy(net, vx, vy)
    net.eval()
    return net, info


class ClassifierFeatures:
    """The offline feature space (see the module docstring)."""

    name = "classifier"
    label = OFFLINE_LABEL
    comparable_to_published_fid = False

    def __init__(self, net: FeatureNet, info: dict, directory: Path | None = None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.info = info
        self.directory = directory

    @classmethod
    def load_or_train(cls, directory: str | Path, train_split, valid_split=None, device: str = "cpu", steps: int = 600):
        """Load the classifier cached in ``directory``, or train it on ``train_split`` and
        cache it (marker last)."""
        directory = Path(directory)
        if train_split is None:
            raise FidError("the offline FD classifier needs the training split it is trained on")
        signature = split_signature(train_split)
        marker = completion.read_completion(directory) if directory.is_dir() else None
        if marker is not None and marker.kind == KIND:
            if marker.info.get("signature") != signature:
                raise MismatchError(
                    f"{directory} holds an FD classifier trained on {marker.info.get('signature')}, not on {signature}; "
                    "use another directory for this data"
                )
            info = marker.info["classifier"]
            net = FeatureNet(int(info["in_channels"]), int(info["num_classes"]))
            net.load_state_dict(torch.load(directory / "classifier.pt", map_location="cpu", weights_only=True))
            log.info("FD classifier from %s (valid accuracy %s)", directory, info.get("valid_accuracy"))
            return cls(net, info, directory, device)
        log.info("training the FD classifier on %s/%s (%d images) -> %s", train_split.dataset, train_split.split,
                 len(train_split), directory)  # fmt: skip
        net, info = train_classifier(train_split, valid_split, steps=steps)
        completion.begin(directory)
        torch.save(net.state_dict(), directory / "classifier.pt")
        completion.mark_complete(directory, KIND, ["classifier.pt"], producer=PRODUCER, signature=signature,
                                 classifier=info, label=OFFLINE_LABEL)  # fmt: skip
        return cls(net, info, directory, device)

    def features(self, images: Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.net.features(images.float().to(self.device)).double().cpu().numpy()

    def describe(self) -> dict:
        out = {"name": self.name, "label": self.label, "comparable_to_published_fid": False, "architecture": ARCHITECTURE}
        out.update({k: self.info[k] for k in ("train_accuracy", "valid_accuracy") if k in self.info})
        if self.directory is not None:
            out["directory"] = str(self.directory)
        return out
