"""The typed schema of the composed ``speechsq train`` config, and its validator.

Each config node is described by a dataclass: field names are the keys, annotations their
types (``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``Optional[...]``, unions,
``tuple``/``list`` of those, ``dict`` for free-form nodes, nested dataclasses). The
``training`` node's schema is :class:`~speechsq.training.trainer.TrainerConfig` itself (one
source of truth); ``data`` and ``model`` are looked up by their ``name`` in
:data:`DATA_SCHEMAS` / :data:`MODEL_SCHEMAS` (register the schema of a new batch source or
model there). Free-form nodes are checked by their consumers: ``quantizer.options`` against
the quantizer's constructor (``build_quantizer``), ``*.likelihood`` by ``build_likelihood``,
``data.options`` by the image format loader, ``preprocessing`` by the feature pipelines.

:func:`validate_tree` fails with **one line** at the first problem:

* ``training.steps: expected an integer, got 'abc'`` (and ``5.5``: no silent rounding);
* ``unknown key quantizer.num_code; did you mean quantizer.num_codes?``;
* ``model.encoder_channels: missing`` for a required key that no config file sets.

A field declared with :func:`optional` may be absent from the yaml files; the validator then
fills in its default (new keys need not be added to every file of a group).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Union

from speechsq.registry import Registry
from speechsq.training.schedules import KLWarmup, TemperatureSchedule
from speechsq.training.trainer import TrainerConfig


class SchemaError(ValueError):
    """One problem, as one line naming the key."""


def optional(default: Any = None, *, factory=None):
    """A field that may be absent from the config files (its default is filled in)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"optional": True})
    return field(default=default, metadata={"optional": True})


FREE_FORM = dict  # a node whose keys the schema does not fix


# ----- the schemas of the groups ------------------------------------------------------------
@dataclass
class SpeechDataSchema:
    """``data: speech_segments`` (speechsq/data/speech.py; held-out set: speechsq/data/validation.py)."""

    name: str
    feats_dir: str
    n_mels: int
    batch_size: int
    segment_frames: int
    context_frames: int
    data_dir: Optional[str] = optional(None)
    preload: bool = optional(False)
    valid_feats_dir: Optional[str] = optional(None)
    valid_data_dir: Optional[str] = optional(None)


@dataclass
class ImageDataSchema:
    """``data: images`` (speechsq/data/images.py)."""

    name: str
    dataset: str
    root: Optional[str]
    split: Literal["train", "valid", "test"]
    pixels: Literal["continuous", "categorical"]
    batch_size: int
    limit: Optional[int] = optional(None)
    transforms: list[str] = optional(factory=list)
    cache: bool = optional(False)
    options: FREE_FORM = optional(factory=dict)
    valid_split: Optional[Literal["train", "valid", "test"]] = optional("valid")


@dataclass
class SpeechModelSchema:
    """``model: speech_vqvae`` (speechsq/models/speech.py)."""

    name: str
    n_mels: int
    encoder_channels: int
    norm: str
    speaker_dim: int
    decoder_hidden: int
    decoder_layers: int
    jitter: float
    loss_normalization: str
    likelihood: FREE_FORM
    n_speakers: Optional[int] = optional(None)
    speakers: Optional[list[str]] = optional(None)


@dataclass
class ImageModelSchema:
    """``model: image_vqvae`` (speechsq/models/image.py)."""

    name: str
    network: str
    width: Optional[int]
    channels: int
    likelihood: FREE_FORM
    num_categories: Optional[int] = optional(None)
    categorical_decoder: str = optional("vmf")
    vmf_directions: str = optional("one_hot")
    vmf_init_kappa: float = optional(1.0)
    output_activation: str = optional("auto")
    normalize_latent: bool = optional(False)
    variance_head: Literal["adapter", "resblock"] = optional("adapter")


@dataclass
class PixelCNNPriorSchema:
    """``model: pixelcnn_prior`` (speechsq/models/pixelcnn.py); sizes filled from the code maps."""

    name: str
    channels: int
    layers: int
    kernel_size: int
    head_channels: int
    num_codes: Optional[int] = optional(None)
    height: Optional[int] = optional(None)
    width: Optional[int] = optional(None)
    num_classes: Optional[int] = optional(None)


@dataclass
class CodeMapsDataSchema:
    """``data: code_maps`` (speechsq/data/code_maps.py)."""

    name: str
    codes_dir: str
    batch_size: int


DATA_SCHEMAS: Registry[type] = Registry("data schema")
MODEL_SCHEMAS: Registry[type] = Registry("model schema")
DATA_SCHEMAS.register("speech_segments")(SpeechDataSchema)
DATA_SCHEMAS.register("images")(ImageDataSchema)
MODEL_SCHEMAS.register("speech_vqvae")(SpeechModelSchema)
MODEL_SCHEMAS.register("image_vqvae")(ImageModelSchema)
MODEL_SCHEMAS.register("pixelcnn_prior")(PixelCNNPriorSchema)
DATA_SCHEMAS.register("code_maps")(CodeMapsDataSchema)


@dataclass
class QuantizerSchema:
    """``quantizer: <name>`` (speechsq/conf/quantizer/*.yaml)."""

    name: str
    num_codes: int
    code_dim: int
    options: FREE_FORM
    likelihood: FREE_FORM
    kl_warmup: KLWarmup
    temperature: TemperatureSchedule
    image_lr: Optional[float] = optional(None)  # the learning rate on images (SQ-VAE App. E.1.2), if not 1e-3


@dataclass
class RunSchema:
    """The whole composed config of ``speechsq train``."""

    exp_dir: str
    seed: int
    resume: str
    data: Mapping = field(metadata={"by_name": DATA_SCHEMAS})
    preprocessing: FREE_FORM
    model: Mapping = field(metadata={"by_name": MODEL_SCHEMAS})
    quantizer: QuantizerSchema
    training: TrainerConfig
    trust_checkpoint: bool = optional(False)


# ----- the validator --------------------------------------------------------------------------
def validate_tree(tree: Mapping[str, Any], schema: type, path: str = "") -> list[tuple[str, Any]]:
    """Check ``tree`` (plain, resolved) against the dataclass ``schema``; returns the
    ``(key, default)`` pairs of optional keys that were absent (to be filled in)."""
    filled: list[tuple[str, Any]] = []
    _check_node(tree, schema, path, filled)
    return filled


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _check_node(tree: Any, schema: type, path: str, filled: list) -> None:
    if not isinstance(tree, Mapping):
        raise SchemaError(f"{path or 'the config'}: expected a group of keys, got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in tree:
        if key not in fields:
            raise SchemaError(_unknown(_join(path, str(key)), str(key), fields, path))
    for name, spec in fields.items():
        full = _join(path, name)
        if name not in tree:
            if spec.metadata.get("optional"):
                default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
                filled.append((full, default))
                continue
            raise SchemaError(f"{full}: missing (a required key; set it in the config files or as {full}=...)")
        value = tree[name]
        registry = spec.metadata.get("by_name")
        if registry is not None:
            kind = value.get("name") if isinstance(value, Mapping) else None
            if kind is None or kind not in registry:
                raise SchemaError(f"{full}.name: expected one of {', '.join(registry.names())}, got {kind!r}")
            _check_node(value, registry.get(kind), full, filled)
        else:
            _check_value(value, hints[name], full, filled)


def _unknown(full: str, key: str, fields: Mapping[str, Any], parent: str) -> str:
    close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
    if close:
        return f"unknown key {full}; did you mean {_join(parent, close[0])}?"
    return f"unknown key {full}; the keys of {parent or 'the config'} are: {', '.join(fields)}"


def _check_value(value: Any, tp: Any, path: str, filled: list) -> None:
    if not _matches(value, tp, path, filled):
        raise SchemaError(f"{path}: expected {describe(tp)}, got {value!r}")


def _matches(value: Any, tp: Any, path: str, filled: list) -> bool:
    """True when ``value`` has type ``tp``; nested groups raise their own precise errors."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            return False
        _check_node(value, tp, path, filled)
        return True
    if origin is Union:
        return any(_matches(value, arm, path, filled) for arm in typing.get_args(tp))
    if origin is Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        return isinstance(value, Mapping)
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return False
            return all(_matches(v, a, f"{path}[{i}]", filled) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        return all(_matches(v, item, f"{path}[{i}]", filled) for i, v in enumerate(value))
    raise TypeError(f"schema type {tp!r} of {path} is not supported")


def describe(tp: Any) -> str:
    """``int`` -> "an integer", ``Optional[str]`` -> "a string or null", ..."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return "a group of keys (" + ", ".join(f.name for f in dataclasses.fields(tp)) + ")"
    if origin is Union:
        return " or ".join(describe(arm) for arm in typing.get_args(tp))
    if origin is Literal:
        choices = [repr(c) for c in typing.get_args(tp)]
        return choices[0] if len(choices) == 1 else "one of " + ", ".join(choices)
    if tp is type(None):
        return "null"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a group of keys"}
    if tp in names:
        return names[tp]
    if origin in (dict, Mapping) or tp is Mapping:
        return "a group of keys"
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
        return f"a list of {_plural(describe(args[0])) if args else 'values'}"
    return repr(tp)


def _plural(text: str) -> str:
    for article in ("an ", "a "):
        if text.startswith(article):
            return text[len(article):] + "s"
    return text
