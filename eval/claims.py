"""The papers' claims, checked against the numbers of one experiment.

A results table says what a run measured; a reader also wants to know whether the run
supports what the paper claims. Each :class:`Claim` here restates one claim of a paper
table, finds the rows it needs in ``results.json`` (``speechsq report``) and decides, from
the per-seed numbers alone, whether it holds and by how many standard deviations:

* a *difference* claim ("VQ-VAE's MSE depends strongly on sigma^2") holds when the gap
  between two rows is larger than ``DIFFERENCE_SIGMAS`` combined standard deviations;
* a *parity* claim ("SQ-VAE matches or beats VQ-VAE at its best sigma^2") holds when the
  first row is better than, or within ``PARITY_SIGMAS`` combined standard deviation of, the
  second.

The combined standard deviation of two rows is ``sqrt(s1^2 + s2^2)`` (sample standard
deviations over seeds); the reported ``z`` is the difference divided by it. With a single
seed there is no spread: such claims are reported as "not testable (1 seed)", never as holding.

Rows are recognised from each run's resolved ``config.yaml`` (quantizer name and decoder
likelihood), not from directory names, so ``vq_ema_sigma2_0.1`` and a user's own
``my_vq`` directory are read the same way. Claim sets are registered by name
(``CLAIM_SETS``): ``sqvae_zerospeech19`` (SQ-VAE Tables 9-10) and ``sqvae_vctk`` (Table 9).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from speechsq.errors import SpeechsqError
from speechsq.registry import Registry

DIFFERENCE_SIGMAS = 2.0
PARITY_SIGMAS = 1.0
VQ_FAMILY = ("vq", "vq_ema", "vq_ema_reset")
LOWER_IS_BETTER = {"mse_db2": True, "abx_across": True, "abx_within": True}


@dataclass
class RowFacts:
    """What a results row is: its quantizer, its fixed decoder variance (VQ family), its numbers."""

    label: str
    display_name: str
    quantizer: str
    sigma2: float | None
    metrics: dict


@dataclass
class ClaimResult:
    claim: str
    source: str
    status: str  # "holds", "does not hold", "not testable"
    detail: str
    z: float | None = None
    rows: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Claim:
    text: str
    source: str
    check: Callable[[list[RowFacts]], ClaimResult]


CLAIM_SETS: Registry[tuple[Claim, ...]] = Registry("claim set")


# --------------------------------------------------------------------------- reading rows

def _read_yaml(path: Path) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def row_facts(exp_dir: str | Path, results: dict) -> list[RowFacts]:
    """One :class:`RowFacts` per row of ``results`` (from the runs' ``config.yaml``)."""
    exp_dir = Path(exp_dir)
    facts = []
    for label, entry in results.get("quantizers", {}).items():
        configs = sorted((exp_dir / label).glob("seed*/config.yaml"))
        if not configs:
            continue  # a row without its configs cannot be placed in a claim
        cfg = _read_yaml(configs[0])
        quantizer = cfg.get("quantizer", {})
        likelihood = quantizer.get("likelihood") or {}
        sigma2 = likelihood.get("sigma2") if likelihood.get("name") == "gaussian_fixed" else None
        facts.append(RowFacts(label, entry.get("display_name", label), str(quantizer.get("name")),
                              None if sigma2 is None else float(sigma2), entry.get("metrics", {})))
    return facts


def _stat(row: RowFacts, metric: str) -> tuple[float, float, int] | None:
    s = row.metrics.get(metric) or {}
    if not s.get("n"):
        return None
    return float(s["mean"]), float(s["std"]), int(s["n"])


def _fmt(row: RowFacts, metric: str) -> str:
    mean, std, n = _stat(row, metric)
    return f"{row.display_name}: {mean:.2f} ± {std:.2f} (n={n})"


def _vq_rows(rows: list[RowFacts], metric: str) -> list[RowFacts]:
    return [r for r in rows if r.quantizer in VQ_FAMILY and r.sigma2 is not None and _stat(r, metric)]


def _best(rows: list[RowFacts], metric: str) -> RowFacts:
    return min(rows, key=lambda r: _stat(r, metric)[0])


def _worst(rows: list[RowFacts], metric: str) -> RowFacts:
    return max(rows, key=lambda r: _stat(r, metric)[0])


def _combined(a: RowFacts, b: RowFacts, metric: str) -> tuple[float, float, int]:
    (ma, sa, na), (mb, sb, nb) = _stat(a, metric), _stat(b, metric)
    return ma - mb, math.sqrt(sa * sa + sb * sb), min(na, nb)


def _not_testable(text: str, source: str, why: str, rows: list[RowFacts] = ()) -> ClaimResult:
    return ClaimResult(text, source, "not testable", why, None, [r.label for r in rows])


# --------------------------------------------------------------------------- claim kinds

def sensitivity_claim(text: str, source: str, metric: str) -> Claim:
    """The VQ family's worst and best sigma^2 differ by more than DIFFERENCE_SIGMAS."""

    def check(rows: list[RowFacts]) -> ClaimResult:
        vq = _vq_rows(rows, metric)
        if len({r.sigma2 for r in vq}) < 2:
            return _not_testable(text, source, "needs VQ-VAE rows at two or more sigma^2 (--vq-sigma2)", vq)
        best, worst = _best(vq, metric), _worst(vq, metric)
        diff, spread, n = _combined(worst, best, metric)
        if n < 2:
            return _not_testable(text, source, "needs 2 or more seeds per row for a spread", [best, worst])
        z = diff / spread if spread > 0 else (0.0 if diff == 0 else math.inf)  # no spread and no gap: no difference
        holds = z > DIFFERENCE_SIGMAS
        detail = (f"worst {_fmt(worst, metric)} vs best {_fmt(best, metric)}: difference {diff:.2f} = "
                  f"{z:.1f} combined std ({'>' if holds else '<='} {DIFFERENCE_SIGMAS:g})")
        return ClaimResult(text, source, "holds" if holds else "does not hold", detail, z, [worst.label, best.label])

    return Claim(text, source, check)


def parity_claim(text: str, source: str, metric: str, quantizer: str) -> Claim:
    """``quantizer`` is better than, or within PARITY_SIGMAS of, the VQ family at its best sigma^2."""

    def check(rows: list[RowFacts]) -> ClaimResult:
        mine = [r for r in rows if r.quantizer == quantizer and _stat(r, metric)]
        vq = _vq_rows(rows, metric)
        if not mine or not vq:
            return _not_testable(text, source, f"needs a {quantizer} row and VQ-VAE rows with {metric}", mine + vq)
        sq, best = mine[0], _best(vq, metric)
        diff, spread, n = _combined(sq, best, metric)
        if n < 2:
            return _not_testable(text, source, "needs 2 or more seeds per row for a spread", [sq, best])
        z = diff / spread if spread > 0 else (0.0 if diff == 0 else math.copysign(math.inf, diff))
        holds = z <= PARITY_SIGMAS
        relation = "better than" if diff < 0 else "worse than"
        detail = (f"{_fmt(sq, metric)} vs the best VQ-VAE row, {_fmt(best, metric)}: {relation} it by {abs(diff):.2f} = "
                  f"{abs(z):.1f} combined std ({'within' if holds else 'beyond'} the {PARITY_SIGMAS:g}-std parity margin)")
        return ClaimResult(text, source, "holds" if holds else "does not hold", detail, z, [sq.label, best.label])

    return Claim(text, source, check)


CLAIM_SETS.register("sqvae_zerospeech19")((
    sensitivity_claim("VQ-VAE's reconstruction depends strongly on its decoder variance sigma^2",
                      "SQ-VAE Table 9 (ZeroSpeech: 34.33 ± 1.57 dB² at 0.1, 79.30 ± 42.95 at 10)", "mse_db2"),
    parity_claim("Gaussian SQ-VAE (I), with nothing to tune, reconstructs as well as or better than VQ-VAE at its best sigma^2",
                 "SQ-VAE Table 9 (ZeroSpeech: 33.17 ± 1.11 vs 34.33 ± 1.57 dB²)", "mse_db2", "sq_gauss1"),
    parity_claim("Gaussian SQ-VAE (IV) reconstructs as well as or better than VQ-VAE at its best sigma^2",
                 "SQ-VAE Table 9 (ZeroSpeech: 32.32 ± 0.88 vs 34.33 ± 1.57 dB²)", "mse_db2", "sq_gauss4"),
    sensitivity_claim("VQ-VAE's ABX error depends strongly on sigma^2",
                      "SQ-VAE Table 10 (22.36 ± 0.14 % at 0.01, 35.40 ± 6.73 % at 10)", "abx_across"),
    parity_claim("Gaussian SQ-VAE (I) is on par with VQ-VAE at its best sigma^2 on ABX",
                 "SQ-VAE Table 10 (22.11 ± 0.62 vs 22.36 ± 0.14 %)", "abx_across", "sq_gauss1"),
))

CLAIM_SETS.register("sqvae_vctk")((
    sensitivity_claim("VQ-VAE's reconstruction depends strongly on its decoder variance sigma^2",
                      "SQ-VAE Table 9 (VCTK: 29.59 ± 0.25 dB² at 1, 36.92 ± 0.95 at 10)", "mse_db2"),
    parity_claim("Gaussian SQ-VAE (I) reconstructs as well as or better than VQ-VAE at its best sigma^2",
                 "SQ-VAE Table 9 (VCTK: 25.52 ± 0.08 vs 29.59 ± 0.25 dB²)", "mse_db2", "sq_gauss1"),
    parity_claim("Gaussian SQ-VAE (IV) reconstructs as well as or better than VQ-VAE at its best sigma^2",
                 "SQ-VAE Table 9 (VCTK: 24.68 ± 0.21 vs 29.59 ± 0.25 dB²)", "mse_db2", "sq_gauss4"),
))


def check_claims(name: str, exp_dir: str | Path, results: dict) -> list[ClaimResult]:
    """Every claim of the set ``name`` against ``results`` of ``exp_dir`` (rows without data: not testable)."""
    try:
        claims = CLAIM_SETS.get(name)
    except KeyError as err:
        raise SpeechsqError(err.args[0]) from None
    rows = row_facts(exp_dir, results)
    return [claim.check(rows) for claim in claims]


def claims_markdown(name: str, results: list[ClaimResult]) -> str:
    """The "claims" block of results.md."""
    marks = {"holds": "holds", "does not hold": "**does not hold**", "not testable": "not testable"}
    lines = [
        f"### Paper claims, checked on this run ({name})",
        "",
        "| claim | paper | this run | verdict |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r.claim} | {r.source} | {r.detail} | {marks[r.status]} |")
    lines += [
        "",
        f"Computed by `speechsq report` from the per-seed numbers above: a difference holds beyond "
        f"{DIFFERENCE_SIGMAS:g} combined standard deviations sqrt(s1² + s2²); parity holds when better or within "
        f"{PARITY_SIGMAS:g}. The best VQ-VAE sigma² is chosen on the same metric (as the paper's grid search).",
    ]
    return "\n".join(lines) + "\n"
