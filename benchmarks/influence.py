"""Gradient-based data values side by side: alloyml's TracInCP vs captum's TracInCP and dattri's TracIn on
the same MLP and the same 5 checkpoints (digits, 10% flipped training labels).

Also an LDS table (linear datamodeling score, Park et al. 2023, alloyml's `linear_datamodeling_score`): for
TracIn, influence functions with CG and EK-FAC from alloyml and dattri on one small MLP, how well each
method's train×test scores rank `LDS_SUBSETS` random half-subsets by the test log-likelihood of models
retrained on them (same subsets and retrained models for every method).

Reports throughput in train×test influence pairs per second and self-influence time (best of 3 calls for
every library), the AUC of flagging the flipped rows by self-influence (exact and with a 512-d random
projection), and a 100,000-example self-influence pass of an MLP.

    python benchmarks/influence.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ratio, row, write_results  # noqa: E402

from alloyml.valuation import (  # noqa: E402
    ValuationResult,
    flip_labels,
    linear_datamodeling_score,
    noisy_label_detection,
    random_subsets,
)
from alloyml.valuation.influence import (  # noqa: E402
    TrainingCheckpoint,
    ekfac_influence,
    influence_functions,
    self_influence,
    tracin,
)

LOAD_AT_START = [round(v, 2) for v in os.getloadavg()]
LDS_SUBSETS = 40
LDS_DAMPING = 0.01


def _mlp(d_in, d_out, hidden=32):
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_out))


def train_with_checkpoints(x, y, n_classes, epochs=40, n_checkpoints=5, lr=0.05, seed=0):
    """Plain minibatch SGD; a checkpoint (weights, lr) every epochs / n_checkpoints epochs."""
    torch.manual_seed(seed)
    model = _mlp(x.shape[1], n_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0)
    checkpoints = []
    for epoch in range(epochs):
        for batch in torch.randperm(len(x)).split(64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if (epoch + 1) % (epochs // n_checkpoints) == 0:
            checkpoints.append(TrainingCheckpoint({k: v.clone() for k, v in model.state_dict().items()}, lr))
    return model, checkpoints


def _timed(fn, repeats: int = 3):
    """(output, best wall seconds of `repeats` calls): every library is timed the same way, and the best
    of a few calls keeps a shared machine's noise out of the ratio."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def run_captum(model, checkpoints, train, test, tmp):
    from captum.influence import TracInCP

    paths = []
    for i, c in enumerate(checkpoints):
        paths.append(str(Path(tmp) / f"ckpt{i}.pt"))
        torch.save({"state": c.state_dict, "lr": c.learning_rate}, paths[-1])

    def load(net, path):
        payload = torch.load(path, weights_only=True)
        net.load_state_dict(payload["state"])
        return payload["lr"]

    dataset = torch.utils.data.TensorDataset(*train)
    tracer = TracInCP(model, dataset, paths, checkpoints_load_func=load,
                      loss_fn=torch.nn.CrossEntropyLoss(reduction="sum"), batch_size=256,
                      sample_wise_grads_per_batch=True)
    scores, seconds = _timed(lambda: tracer.influence(test, show_progress=False))
    self_scores, self_seconds = _timed(lambda: tracer.self_influence(show_progress=False))
    return scores.T.double().numpy(), seconds, self_scores.double().numpy(), self_seconds


def run_dattri(model, checkpoints, train, test, projection_dim=512):
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.task import AttributionTask

    def loss_func(params, pair):
        x, y = pair
        return F.cross_entropy(torch.func.functional_call(model, params, (x.unsqueeze(0),)), y.unsqueeze(0))

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=[c.state_dict for c in checkpoints])
    attributor = TracInAttributor(task, weight_list=torch.tensor([c.learning_rate for c in checkpoints]),
                                  normalized_grad=False, projector_kwargs={"proj_dim": projection_dim,
                                                                           "device": "cpu"})
    train_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=256)
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*test), batch_size=256)
    scores, seconds = _timed(lambda: attributor.attribute(train_loader, test_loader))
    self_scores, self_seconds = _timed(lambda: attributor.self_attribute(train_loader))
    return scores.double().numpy(), seconds, self_scores.double().numpy(), self_seconds


def _dattri_if(model, train, test, kind):
    """dattri's IF attributor ('cg' or 'ekfac') scores [n_train, n_test] with the same damping."""
    from dattri.algorithm.influence_function import IFAttributorCG, IFAttributorEKFAC
    from dattri.task import AttributionTask

    def loss_func(params, pair):  # batched (EK-FAC's covariances) or one example (vmapped gradients)
        x, y = pair
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    task = AttributionTask(loss_func=loss_func, model=model, checkpoints=model.state_dict())
    if kind == "cg":
        attributor = IFAttributorCG(task, max_iter=50, regularization=LDS_DAMPING)
    else:
        attributor = IFAttributorEKFAC(task, damping=LDS_DAMPING)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*train), batch_size=len(train[0]))
    test_loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*test), batch_size=len(test[0]))
    attributor.cache(loader)
    return attributor.attribute(loader, test_loader).detach().double().numpy()


def lds_rows(rows, quick: bool) -> None:
    """LDS of TracIn, IF (CG) and EK-FAC on a digits MLP, alloyml and dattri on the same retrained models."""
    from sklearn.datasets import load_digits
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    n_train, n_test = (300, 50) if quick else (600, 200)
    order = np.random.default_rng(0).permutation(len(x))
    x = StandardScaler().fit(x[order[:n_train]]).transform(x)
    train = (torch.tensor(x[order[:n_train]], dtype=torch.float64), torch.as_tensor(y[order[:n_train]]))
    test = (torch.tensor(x[order[n_train:n_train + n_test]], dtype=torch.float64),
            torch.as_tensor(y[order[n_train:n_train + n_test]]))

    def fit(idx):
        model, checkpoints = train_with_checkpoints(train[0][idx].float(), train[1][idx], n_classes=10, epochs=40)
        return model.double(), [TrainingCheckpoint({k: v.double() for k, v in c.state_dict.items()},
                                                   c.learning_rate) for c in checkpoints]

    start = time.perf_counter()
    masks = random_subsets(n_train, LDS_SUBSETS, 0.5, seed=0)
    outputs = []
    for mask in masks:
        model, _ = fit(torch.as_tensor(np.flatnonzero(mask)))
        with torch.no_grad():
            outputs.append(-F.cross_entropy(model(test[0]), test[1], reduction="none").numpy())
    retrain_s = time.perf_counter() - start
    model, checkpoints = fit(torch.arange(n_train))

    def lds(scores):  # scores [n_train, n_test], positive = helpful = raises the test log-likelihood
        return round(linear_datamodeling_score(np.asarray(scores).T, masks, np.array(outputs)).score, 4)

    methods = {
        "tracin": (lambda: tracin(model, checkpoints, train, test, F.cross_entropy).scores, None),
        "influence (CG)": (lambda: influence_functions(model, train, test, F.cross_entropy, damping=LDS_DAMPING,
                                                       max_iter=50).scores,
                           lambda: _dattri_if(model, train, test, "cg")),
        "influence (EK-FAC)": (lambda: ekfac_influence(model, train, test, F.cross_entropy,
                                                       damping=LDS_DAMPING).scores,
                               lambda: _dattri_if(model, train, test, "ekfac")),
    }
    for name, (ours_fn, peer_fn) in methods.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours, ours_s = _timed(ours_fn, repeats=1)
        peer, peer_s, why = None, None, ""
        if peer_fn is not None:
            try:
                peer, peer_s = _timed(peer_fn, repeats=1)
            except Exception as err:  # noqa: BLE001 — a failing peer is recorded, not fatal
                why = f"dattri failed: {type(err).__name__}: {str(err)[:160]}"
        ours_lds = lds(ours)
        peer_lds = None if peer is None else lds(peer)
        pearson = None if peer is None else np.corrcoef(ours.ravel(), peer.ravel())[0, 1]
        agree = "" if peer is None else f"Pearson(alloyml, dattri scores) {pearson:.4f}. "
        rows.append(row(f"LDS {name}, digits MLP 64-32-10, {n_train} train x {n_test} test", "LDS", ours_lds,
                        {"dattri": peer_lds} if peer_fn is not None else {},
                        None if peer_lds is None else ratio(ours_lds, peer_lds, higher_is_better=True),
                        ">= dattri LDS" if peer_fn is not None else None,
                        None if peer_lds is None else ours_lds >= peer_lds - 0.005,
                        f"seconds alloyml {ours_s:.2f}, dattri {None if peer_s is None else round(peer_s, 2)}; "
                        f"{LDS_SUBSETS} half-subsets retrained ({retrain_s:.0f} s), output = test log-likelihood, "
                        f"damping {LDS_DAMPING}; EK-FAC and dattri's EK-FAC use the empirical/true Fisher of all "
                        f"linear layers, CG the Hessian. {agree}{why}"))


def _auc(self_scores, flipped) -> float:
    n = len(self_scores)
    return noisy_label_detection(ValuationResult(-np.asarray(self_scores), np.zeros(n), np.ones(n), "x"),
                                 flipped).auc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale-only", action="store_true",
                        help="rerun only the self-influence scale row and merge it into results/influence.json")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.scale_only:
        _merge_row(self_influence_scale(args.quick))
        return
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=540, random_state=0, stratify=y)
    scaler = StandardScaler().fit(x_train)
    noisy, flipped = flip_labels(y_train, 0.1, seed=0)
    train = (torch.tensor(scaler.transform(x_train), dtype=torch.float32), torch.as_tensor(noisy))
    test = (torch.tensor(scaler.transform(x_test), dtype=torch.float32), torch.as_tensor(y_test))
    model, checkpoints = train_with_checkpoints(*train, n_classes=10)
    pairs = len(train[0]) * len(test[0])
    rows = []

    ours, our_s = _timed(lambda: tracin(model, checkpoints, train, test, F.cross_entropy).scores)
    ours_self, our_self_s = _timed(lambda: self_influence(model, checkpoints, train, F.cross_entropy))
    projected_self = self_influence(model, checkpoints, train, F.cross_entropy, projection_dim=512)
    our_auc, proj_auc = _auc(-ours_self.values, flipped), _auc(-projected_self.values, flipped)

    peers, notes = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            captum_scores, captum_s, captum_self, captum_self_s = run_captum(model, checkpoints, train, test, tmp)
            peers["captum"] = (captum_s, captum_self_s, _auc(captum_self, flipped),
                               float(np.corrcoef(captum_scores.ravel(), ours.ravel())[0, 1]))
        except Exception as err:  # noqa: BLE001 — a failing peer is recorded, not fatal
            notes.append(f"captum failed: {type(err).__name__}: {err}")
    try:
        dattri_scores, dattri_s, dattri_self, dattri_self_s = run_dattri(model, checkpoints, train, test)
        peers["dattri"] = (dattri_s, dattri_self_s, _auc(dattri_self, flipped),
                           float(np.corrcoef(dattri_scores.ravel(), ours.ravel())[0, 1]))
    except Exception as err:  # noqa: BLE001
        notes.append(f"dattri failed: {type(err).__name__}: {err}")

    corr = "; ".join(f"{k} scores vs ours: Pearson {v[3]:.6f}" for k, v in peers.items())
    rows.append(row("tracin train×test, digits MLP, 5 ckpts", "pairs/s", round(pairs / our_s),
                    {k: round(pairs / v[0]) for k, v in peers.items()},
                    ratio(pairs / our_s, pairs / peers["captum"][0], higher_is_better=True) if "captum" in peers
                    else None, ">= 3x captum", (pairs / our_s) >= 3 * pairs / peers["captum"][0]
                    if "captum" in peers else None, "; ".join([corr, *notes])))
    rows.append(row("self-influence, digits MLP, 5 ckpts", "seconds", round(our_self_s, 3),
                    {k: round(v[1], 3) for k, v in peers.items()},
                    ratio(our_self_s, peers["captum"][1]) if "captum" in peers else None, None, None,
                    "dattri uses a 512-d projection"))
    rows.append(row("mislabel AUC (self-influence, 10% flipped)", "AUC", round(our_auc, 4),
                    {k: round(v[2], 4) for k, v in peers.items()},
                    ratio(our_auc, peers["captum"][2], higher_is_better=True) if "captum" in peers else None,
                    ">= 0.86 (dattri's published MNIST TracIn)", our_auc >= 0.86, "exact gradients"))
    rows.append(row("mislabel AUC, projection 512", "AUC", round(proj_auc, 4),
                    {"dattri (proj 512)": round(peers["dattri"][2], 4)} if "dattri" in peers else {},
                    ratio(proj_auc, peers["dattri"][2], higher_is_better=True) if "dattri" in peers else None,
                    ">= 0.86", proj_auc >= 0.86, ""))

    lds_rows(rows, args.quick)

    rows.append(self_influence_scale(args.quick))
    for r in rows:
        print(r["case"], r["alloyml"], r["peers"], r["ratio"])
    write_results("influence", rows, load={"start": LOAD_AT_START, "end": [round(v, 2) for v in os.getloadavg()]},
                  cpus_used=len(os.sched_getaffinity(0)))


def self_influence_scale(quick: bool) -> dict:
    """The 100,000-example self-influence row (20,000 with --quick), best of 3 calls at the benchmark's torch
    thread count and, interleaved, on one thread: on a loaded 2-core machine every parallel op waits for a
    descheduled second thread (a few ms each, thousands of ops), so the two figures show how much of the
    time is compute and how much is that wait."""
    n_big = 20_000 if quick else 100_000
    g = torch.Generator().manual_seed(1)
    big_x = torch.randn(n_big, 64, generator=g)
    big_y = torch.randint(0, 10, (n_big,), generator=g)
    big_model = _mlp(64, 10)
    big_ckpts = [TrainingCheckpoint({k: v + 0.01 * i for k, v in big_model.state_dict().items()}, 0.05)
                 for i in range(5)]
    threads, load_start = torch.get_num_threads(), [round(v, 2) for v in os.getloadavg()]
    timings = {threads: [], 1: []}
    for _ in range(3):
        for n_threads in timings:
            torch.set_num_threads(n_threads)
            timings[n_threads].append(round(_timed(lambda: self_influence(
                big_model, big_ckpts, (big_x, big_y), F.cross_entropy, batch_size=4096), repeats=1)[1], 2))
    torch.set_num_threads(threads)
    big_s = min(timings[threads])
    return row(f"self-influence {n_big:,} examples, MLP 64-32-10, 5 ckpts", "seconds", big_s, {}, None,
               "< 60 s for 100,000", big_s < 60 if n_big == 100_000 else None,
               f"best of 3 interleaved calls: torch threads {threads} {timings[threads]}, 1 thread {timings[1]} "
               f"(load at start {load_start}, end {[round(v, 2) for v in os.getloadavg()]}); factored linear-layer "
               "gradients (no per-example gradient materialised)", one_thread_seconds=min(timings[1]))


def _merge_row(new_row: dict) -> None:
    """--scale-only: replace the self-influence scale row in results/influence.json, keep the rest."""
    import json

    from _common import RESULTS_DIR

    path = RESULTS_DIR / "influence.json"
    payload = json.loads(path.read_text())
    rows = [new_row if r["case"] == new_row["case"] else r for r in payload["rows"]]
    if new_row not in rows:
        rows.append(new_row)
    commands = payload.get("commands") or [payload.get("command")]
    extra = {k: v for k, v in payload.items() if k not in ("topic", "when", "machine", "command", "rows")}
    extra["commands"] = [c for c in commands if c] + ["python " + " ".join(sys.argv) + " (self-influence scale row)"]
    extra["command"] = payload["command"]  # the run that made the other rows; `commands` lists the reruns
    write_results("influence", rows, **extra)


if __name__ == "__main__":
    main()
