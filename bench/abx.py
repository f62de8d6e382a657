"""Benchmark: speechsq ABX vs zerospeech-libriabx2 (the reference) and fastabx, same inputs, same run.

    python bench/abx.py                       # comparison at 12,000 items + scaling rows
    python bench/abx.py --scaling ''          # the comparison only (about 3 minutes)
    python bench/abx.py --scaling 12000 --dims 64,units --no-peer   # a quick look

Every measurement runs in a fresh child process (``--child``), so each tool pays its own
start-up (imports excluded from "call s", included in "process s"), and its peak resident
memory is its own (``ru_maxrss``). Columns:

* ``call s``: wall time of the ABX call alone (feature loading included, imports not);
* ``cpu s``: CPU time of that call (all threads); ``process s``: the child's wall time;
* ``peak MiB``: the child's peak RSS; ``base MiB``: its RSS after the imports, before the call.

**Comparison** (``--items``, ``--speakers``; 16-dim features, 10 ms frames, all four
conditions, the reference's subsampling 10 / 5 / seed 3459): speechsq and fastabx with one
thread and with all (``--threads``), zerospeech-libriabx2 with one thread (two threads
only oversubscribe its many small torch operations). Printed: the time ratios
speechsq / fastabx (goal <= 1.0) and zerospeech-libriabx2 / speechsq (goal >= 10), and the
score differences to zerospeech-libriabx2 (goal <= 1e-4 points; speechsq replays its draws,
fastabx draws its own samples).

**Scaling** (``--scaling`` item counts x ``--dims``; 20 ms frames, 2-5 frames per phone,
600 items per speaker so that cells grow with the data; units: the index of the nearest of
256 code vectors, scored with the edit distance): speechsq alone (and fastabx with
``--scaling-fastabx``), with the number of cells and alignments, time per million
alignments (flat when the cost grows as the number of pairs) and peak memory.

The peers: ``zerospeech-libriabx2`` comes with the ``bench`` extra (``pip install -e
'.[bench]'``; installed ``--no-deps`` plus pandas if missing). ``fastabx`` 0.9.0 needs
Python >= 3.12 and torch >= 2.10, so it lives in its own environment (``--fastabx-python``,
default ``.venv-fastabx/bin/python``)::

    python3.12 -m venv .venv-fastabx && .venv-fastabx/bin/pip install fastabx==0.9.0

When it cannot be run, the script says why and leaves its columns out. Synthetic inputs
are written once under ``--work-dir`` and reused by later runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONDITIONS = ("within-within", "across-within", "within-any", "across-any")
SUBSAMPLING = {"max_size_group": 10, "max_x_across": 5, "seed": 3459}


# --------------------------------------------------------------------------- children


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure(run) -> dict:
    base = _rss_mib()
    cpu, wall = time.process_time(), time.perf_counter()
    scores, extra = run()
    return {"call_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu, "base_mib": base,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "scores": scores, **extra}


def child_speechsq(args) -> dict:
    from speechsq.eval.abx import compute_abx, configure_cpu_threads

    configure_cpu_threads(args.threads)

    def run():
        result = compute_abx(args.item, args.features, frame_shift=args.frame_shift, distance=args.distance,
                             progress=False, **SUBSAMPLING)
        return result.scores, {"n_cells": result.n_cells, "n_alignments": result.settings["n_alignments"]}

    return _measure(run)


def child_fastabx(args) -> dict:
    import numpy as np
    import torch
    from fastabx import Dataset, Score, Subsampler, Task

    torch.set_num_threads(args.threads)
    settings = {  # (by, across) of each condition, as fastabx's zerospeech_abx sets them
        "within-within": (["prev-phone", "next-phone", "speaker"], None), "within-any": (["speaker"], None),
        "across-within": (["prev-phone", "next-phone"], ["speaker"]), "across-any": (None, ["speaker"]),
    }

    def run():
        dataset = Dataset.from_item(args.item, args.features, round(1 / args.frame_shift),
                                    feature_maker=lambda path: torch.from_numpy(np.load(path)), extension=".npy",
                                    device="cpu", progress=False)
        scores = {}
        for key in CONDITIONS:
            by, across = settings[key]
            subsampler = Subsampler(SUBSAMPLING["max_size_group"], SUBSAMPLING["max_x_across"], SUBSAMPLING["seed"])
            task = Task(dataset, on="#phone", by=by, across=across, subsampler=subsampler)
            levels = ([("next-phone", "prev-phone")] if key.endswith("-within") else []) + ["speaker"]
            scores[key] = 100 * Score(task, "angular", progress=False).collapse(levels=levels)
        return scores, {}

    return _measure(run)


def child_reference(args) -> dict:
    import contextlib
    import io
    import warnings

    import torch
    import zrc_abx2

    torch.set_num_threads(args.threads)

    def run():
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = zrc_abx2.EvalABX().eval_abx(zrc_abx2.EvalArgs(
                path_data=str(args.features), path_item_file=str(args.item), distance_mode=args.distance,
                feature_size=args.frame_shift, max_size_group=SUBSAMPLING["max_size_group"],
                max_x_across=SUBSAMPLING["max_x_across"], seed=SUBSAMPLING["seed"]))
        return {f"{row['abx-s-condition']}-{row['abx-c-condition']}": 100 * row["score"] for row in rows}, {}

    return _measure(run)


CHILDREN = {"speechsq": child_speechsq, "fastabx": child_fastabx, "zerospeech-libriabx2": child_reference}


def spawn(tool: str, python: str, task: dict, threads: int, timeout: float) -> dict:
    """Run one measurement in a fresh process; {"error": why} when it fails."""
    cmd = [python, str(Path(__file__).resolve()), "--child", tool, "--item", task["item"], "--features",
           task["features"], "--frame-shift", str(task["frame_shift"]), "--distance", task["distance"],
           "--child-threads", str(threads)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads), "SPEECHSQ_THREADS": str(threads)}
    started = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- inputs


def synthetic_task(work: Path, name: str, **kwargs) -> dict:
    """Write (once) a synthetic task; returns item, features, frame shift and distance."""
    from speechsq.eval.abx_synthetic import make_synthetic_abx_task

    root = work / name
    done = root / "done.json"
    if not done.is_file():
        task = make_synthetic_abx_task(root, **kwargs)
        done.write_text(json.dumps({"n_items": task.n_items, "n_files": task.n_files, "n_speakers": task.n_speakers}))
    info = json.loads(done.read_text())
    distance = "edit" if kwargs.get("units") else "cosine"
    return {"item": str(root / "task.item"), "features": str(root / "features"),
            "frame_shift": kwargs.get("frame_shift", 0.01), "distance": distance, **info}


def fastabx_status(python: str) -> str | None:
    """None when fastabx can run with ``python``, else why not."""
    if not Path(python).exists():
        return f"{python} not found (make it: python3.12 -m venv .venv-fastabx && .venv-fastabx/bin/pip install fastabx==0.9.0)"
    probe = subprocess.run([python, "-c", "import fastabx, torch; print(fastabx.__version__ if hasattr(fastabx, '__version__') else '?', torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        return f"fastabx does not import with {python}: {(probe.stderr.strip().splitlines() or ['?'])[-1]}"
    return None


def ensure_reference() -> str | None:
    if importlib.util.find_spec("zrc_abx2") is None:
        try:
            subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "zerospeech-libriabx2", "pandas"])
        except subprocess.CalledProcessError as err:
            return f"zerospeech-libriabx2 could not be installed ({err})"
    return None


# --------------------------------------------------------------------------- report


def _fmt(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def report_comparison(rows: list[tuple[str, int, dict]]) -> None:
    print(f"{'tool':<22}{'threads':>8}{'call s':>9}{'cpu s':>9}{'process s':>11}{'peak MiB':>10}{'base MiB':>10}")
    for tool, threads, r in rows:
        if "error" in r:
            print(f"{tool:<22}{threads:>8}  not run: {r['error']}")
            continue
        print(f"{tool:<22}{threads:>8}{r['call_s']:>9.2f}{r['cpu_s']:>9.2f}{r['process_s']:>11.2f}"
              f"{r['peak_mib']:>10.0f}{r['base_mib']:>10.0f}")
    by = {(tool, threads): r for tool, threads, r in rows if "error" not in r}
    reference = by.get(("zerospeech-libriabx2", 1))
    print()
    for (tool, threads), r in sorted(by.items()):
        if tool != "speechsq":
            continue
        fast = by.get(("fastabx", threads))
        if fast:
            print(f"{threads} thread(s): speechsq / fastabx time = {r['call_s'] / fast['call_s']:.2f} (call), "
                  f"{r['cpu_s'] / fast['cpu_s']:.2f} (cpu), {r['process_s'] / fast['process_s']:.2f} (process)")
        if reference and threads == 1:
            print(f"1 thread: zerospeech-libriabx2 / speechsq time = {reference['call_s'] / r['call_s']:.1f}x (call), "
                  f"{reference['process_s'] / r['process_s']:.1f}x (process)")
    if reference:
        print(f"\n{'condition':<15}{'reference %':>13}" + "".join(f"{f'{t} ({n})':>22}" for (t, n) in sorted(by) if t != "zerospeech-libriabx2"))
        for key in CONDITIONS:
            cells = "".join(f"{by[t, n]['scores'][key] - reference['scores'][key]:>+22.2e}" for (t, n) in sorted(by) if t != "zerospeech-libriabx2")
            print(f"{key:<15}{reference['scores'][key]:>13.6f}{cells}")
        for (tool, threads), r in sorted(by.items()):
            if tool != "zerospeech-libriabx2":
                worst = max(abs(r["scores"][k] - reference["scores"][k]) for k in CONDITIONS)
                print(f"max |{tool} ({threads}) - reference| = {worst:.1e} points")


def report_scaling(rows: list[dict]) -> None:
    print(f"{'items':>8}{'features':>10}{'tool':>10}{'threads':>8}{'cells':>9}{'alignments':>12}{'call s':>9}"
          f"{'s / M align':>12}{'peak MiB':>10}{'base MiB':>10}")
    for row in rows:
        r = row["result"]
        if "error" in r:
            print(f"{row['n_items']:>8}{row['features']:>10}{row['tool']:>10}{row['threads']:>8}  not run: {r['error']}")
            continue
        alignments = r.get("n_alignments")
        per_million = r["call_s"] / (alignments / 1e6) if alignments else None
        cells = sum(r["n_cells"].values()) if "n_cells" in r else None
        print(f"{row['n_items']:>8}{row['features']:>10}{row['tool']:>10}{row['threads']:>8}{_fmt(cells, 'd'):>9}"
              f"{_fmt(alignments, 'd'):>12}{r['call_s']:>9.2f}{_fmt(per_million):>12}{r['peak_mib']:>10.0f}{r['base_mib']:>10.0f}")


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=12000, help="items of the comparison task")
    p.add_argument("--speakers", type=int, default=20)
    p.add_argument("--threads", default=f"1,{os.cpu_count()}", help="thread counts for speechsq and fastabx")
    p.add_argument("--no-peer", action="store_true", help="skip zerospeech-libriabx2 (it takes ~1-2 min at 12,000 items)")
    p.add_argument("--no-fastabx", action="store_true")
    p.add_argument("--fastabx-python", default=str(REPO / ".venv-fastabx" / "bin" / "python"))
    p.add_argument("--scaling", default="12000,50000,120000", help="item counts of the scaling rows ('' for none)")
    p.add_argument("--dims", default="64,256,512,units", help="continuous feature dims and/or 'units' for the scaling rows")
    p.add_argument("--scaling-threads", type=int, default=os.cpu_count())
    p.add_argument("--scaling-fastabx", action="store_true", help="also time fastabx on the continuous scaling rows")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement")
    p.add_argument("--work-dir", default="/tmp/speechsq_abx_bench", help="synthetic inputs (written once, reused)")
    # child mode
    p.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    p.add_argument("--item", help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--frame-shift", type=float, default=0.01, help=argparse.SUPPRESS)
    p.add_argument("--distance", default="cosine", help=argparse.SUPPRESS)
    p.add_argument("--child-threads", dest="threads_child", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        args.threads = args.threads_child
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    work = Path(args.work_dir)
    threads = [int(t) for t in args.threads.split(",") if t]
    fastabx_why = "--no-fastabx" if args.no_fastabx else fastabx_status(args.fastabx_python)
    reference_why = "--no-peer" if args.no_peer else ensure_reference()
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores ({os.uname().machine}), load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start")
    if fastabx_why:
        print(f"fastabx: not run ({fastabx_why})")
    if reference_why:
        print(f"zerospeech-libriabx2: not run ({reference_why})")

    task = synthetic_task(work, f"compare_{args.items}_{args.speakers}", n_items=args.items, n_speakers=args.speakers, seed=1)
    print(f"\n## comparison: {task['n_items']} items, {task['n_speakers']} speakers, {task['n_files']} files, 16 dims, "
          f"10 ms frames, cosine, subsampling 10 / 5 / seed 3459")
    rows = []
    for n in threads:
        rows.append(("speechsq", n, spawn("speechsq", sys.executable, task, n, args.timeout)))
        if not fastabx_why:
            rows.append(("fastabx", n, spawn("fastabx", args.fastabx_python, task, n, args.timeout)))
    if not reference_why:
        rows.append(("zerospeech-libriabx2", 1, spawn("zerospeech-libriabx2", sys.executable, task, 1, args.timeout)))
    report_comparison(rows)

    sizes = [int(s) for s in args.scaling.split(",") if s]
    if sizes:
        print(f"\n## scaling: 20 ms frames, 2-5 frames per phone, 600 items per speaker, {args.scaling_threads} thread(s)")
        scaling = []
        for n_items in sizes:
            speakers = max(20, round(n_items / 600))  # 600 items per speaker, as in the comparison
            for kind in [d for d in args.dims.split(",") if d]:
                units = kind == "units"
                dim = 64 if units else int(kind)
                task = synthetic_task(work, f"scale_{n_items}_{kind}", n_items=n_items, n_speakers=speakers, dim=dim,
                                      frame_shift=0.02, phone_frames=(2, 6), units=256 if units else 0, seed=2)
                tools = ["speechsq"] + (["fastabx"] if args.scaling_fastabx and not units and not fastabx_why else [])
                for tool in tools:
                    python = args.fastabx_python if tool == "fastabx" else sys.executable
                    result = spawn(tool, python, task, args.scaling_threads, args.timeout)
                    scaling.append({"n_items": task["n_items"], "features": kind, "tool": tool,
                                    "threads": args.scaling_threads, "result": result})
                    print(f"  ... {task['n_items']} items, {kind}, {tool}: "
                          f"{result.get('call_s', float('nan')):.1f} s {result.get('error', '')}", flush=True)
        report_scaling(scaling)
    load = os.getloadavg()
    print(f"\nload average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
