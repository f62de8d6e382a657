"""Loading a model must not run code: checkpoints load with weights_only=True, a crafted
malicious checkpoint is refused (and does not run), old pickled checkpoints need an explicit
opt-in, and the exported model (safetensors + config) gives bit-identical outputs."""

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from speechsq import cli
from speechsq.completion import MARKER, read_completion
from speechsq.errors import IncompleteOutputError
from speechsq.training import build_run, compose_config, load_checkpoint, load_model
from speechsq.training.checkpoint import UnsafeCheckpointError
from speechsq.training.export import ExportedModelError, export_model
from test_trainer import N_MELS, feats_dir, tiny_cfg  # noqa: F401 - feats_dir is a fixture


@pytest.fixture(scope="module")
def trained(feats_dir, tmp_path_factory):
    exp = tmp_path_factory.mktemp("trained")
    build_run(tiny_cfg(feats_dir, exp, "quantizer=sq_gauss1", "training.steps=4", "training.checkpoint_every=2")).fit()
    return exp


class WritesAFile:
    """Unpickling this writes ``target`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (self.target, "code ran"))


def test_checkpoints_hold_only_tensors_and_plain_data(trained, tmp_path):
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)  # torch's own safe loader
    assert state["format"] == 2 and state["step"] == 4
    assert isinstance(state["config"], dict) and state["config"]["quantizer"]["name"] == "sq_gauss1"
    source = state["processes"][0]["batch_source"]
    assert torch.is_tensor(source["order"]) and source["rng"]["bit_generator"] == "PCG64"
    assert torch.is_tensor(state["processes"][0]["rng"]["numpy"]["keys"])
    assert state["scheduler"]["name"] == "multistep" and state["scheduler"]["state"]["milestones"] == {1000: 1}

    # the image batch source too
    cfg = compose_config(["experiment=images_digits", "quantizer=vq", "quantizer.num_codes=8", "quantizer.code_dim=8",
                          "model.width=8", "data.limit=64", "data.batch_size=16", "training.steps=2",
                          "training.checkpoint_every=2", "training.progress=false", "training.scheduler=plateau",
                          f"exp_dir={tmp_path}"])
    build_run(cfg).fit()
    image_state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert image_state["processes"][0]["batch_source"] == {"epoch": 0, "cursor": 2, "seed": 1234, "size": 64}
    assert image_state["scheduler"]["name"] == "plateau"


def test_a_malicious_checkpoint_is_refused_and_does_not_run(tmp_path, capsys, caplog):
    target = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "step": 1, "payload": WritesAFile(target)}, evil)
    with pytest.raises(UnsafeCheckpointError) as caught:
        load_checkpoint(evil)
    message = str(caught.value)
    assert re.fullmatch(
        rf"{re.escape(str(evil))} can only be loaded by unpickling \(it refers to [\w.]+\), which can run code stored in "
        r"the file; load it only if you trust its source: allow_pickle=True in Python, --trust-checkpoint on the command "
        r"line, trust_checkpoint=true for `speechsq train`", message)
    with pytest.raises(UnsafeCheckpointError):
        load_model(evil)
    assert cli.main(["export-model", "--checkpoint", str(evil), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == f"speechsq export-model: error: {message}\n"
    assert not target.exists()
    # the file is really malicious: the explicit opt-in runs its code (with a warning)
    with caplog.at_level(logging.WARNING, logger="speechsq"):
        load_checkpoint(evil, allow_pickle=True)
    assert target.read_text() == "code ran"
    assert "by unpickling (allow_pickle=True): this can run code stored in the file" in caplog.text


def _as_format_1(state: dict) -> dict:
    """What speechsq wrote before checkpoints were weights_only-loadable: numpy objects inside."""
    old = dict(state, format=1, scheduler=dict(state["scheduler"]["state"]))
    processes = []
    for proc in state["processes"]:
        rng = dict(proc["rng"])
        n = rng["numpy"]
        rng["numpy"] = (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
        source = dict(proc["batch_source"], order=proc["batch_source"]["order"].numpy())
        processes.append({"batch_source": source, "rng": rng})
    old["processes"] = processes
    return old


def test_an_old_pickled_checkpoint_needs_the_opt_in(feats_dir, trained, tmp_path):
    exp = tmp_path / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    state = load_checkpoint(trained / "checkpoints" / "last.pt")
    torch.save(_as_format_1(state), exp / "checkpoints" / "last.pt")
    with pytest.raises(UnsafeCheckpointError, match=(
        r"it refers to numpy\._core\.multiarray\._reconstruct\), which can run code stored in the file; it looks like a "
        r"checkpoint of an older speechsq \(format 1, numpy RNG state pickled\): if it is your own, load it once with the "
        r"opt-in and re-save it, e\.g\. `speechsq export-model --trust-checkpoint --checkpoint PATH --out DIR`; ")):
        build_run(tiny_cfg(feats_dir, exp, "quantizer=sq_gauss1", "training.steps=6"))
    trainer = build_run(tiny_cfg(feats_dir, exp, "quantizer=sq_gauss1", "training.steps=6", "training.checkpoint_every=2",
                                 "trust_checkpoint=true"))
    assert trainer.step == 4
    trainer.fit()
    assert torch.load(exp / "checkpoints" / "last.pt", weights_only=True)["format"] == 2  # re-saved in the safe format


def test_exported_model_gives_bit_identical_outputs(trained, tmp_path, capsys):
    out = tmp_path / "model"
    ckpt = trained / "checkpoints" / "last.pt"
    assert cli.main(["export-model", "--checkpoint", str(ckpt), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "config.yaml", "model.safetensors"]
    from_ckpt, cfg_ckpt = load_model(ckpt)
    from_export, cfg_export = load_model(out)
    marker = read_completion(out)
    assert marker.kind == "model" and marker.count == len(from_ckpt.state_dict()) and marker.info["step"] == 4
    assert cfg_export == cfg_ckpt and not from_export.training
    for key, value in from_ckpt.state_dict().items():
        assert torch.equal(value, from_export.state_dict()[key]), key
    feats = torch.rand(2, N_MELS, 25, generator=torch.Generator().manual_seed(0))
    lengths, speaker = torch.tensor([25, 12]), torch.tensor([2, 0])
    assert torch.equal(from_ckpt.reconstruct(feats, lengths, speaker), from_export.reconstruct(feats, lengths, speaker))
    assert torch.equal(from_ckpt.encode(feats, lengths)["indices"], from_export.encode(feats, lengths)["indices"])
    via_file, _ = load_model(out / "model.safetensors")  # the weights file itself works too
    assert torch.equal(via_file.reconstruct(feats, lengths, speaker), from_ckpt.reconstruct(feats, lengths, speaker))


def test_a_damaged_or_unfinished_export_is_refused(trained, tmp_path):
    out = export_model(trained / "checkpoints" / "last.pt", tmp_path / "model")
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ExportedModelError, match=rf"^{weights} does not match its complete.json \(changed or damaged"):
        load_model(out)
    (out / MARKER).unlink()
    with pytest.raises(IncompleteOutputError, match=rf"{out} is incomplete \(no complete.json.*run `speechsq export-model` again"):
        load_model(out)
