"""The data half of the demo: a real bundled dataset with injected label noise, valued three ways
(pipeline-aware KNN-Shapley, Data Banzhaf, TracIn self-influence), then cleaned and retrained."""

from __future__ import annotations

import numpy as np

from alloyml.workflows.builtin.valuation import scaled_logistic_pipeline
from alloyml.workflows.recording import open_platform, record_valuation
from alloyml.workflows.steps import step


@step(num_cpus=1)
def prepare_data(store: dict, config: dict) -> dict:
    """Load the bundled dataset, split it, flip `noise` of the training labels, register it."""
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    from alloyml.valuation import flip_labels

    x, y = getattr(datasets, f"load_{config['dataset']}")(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=config["seed"],
                                                        stratify=y)
    noisy, flipped = flip_labels(y_train, config["noise"], seed=config["seed"])
    with open_platform(store) as platform:
        dataset = platform.register_dataset(config["dataset"], x_train, noisy,
                                            version=f"noisy-{config['noise']}-seed{config['seed']}")
    return {"x_train": x_train, "y_train": noisy, "y_clean": y_train, "x_test": x_test, "y_test": y_test,
            "flipped": flipped, "dataset_id": dataset.id}


def _record(store, data, result, utility=None) -> dict:
    from alloyml.valuation import noisy_label_detection, point_removal_curve

    detection = noisy_label_detection(result, data["flipped"])
    metrics = {"noise_auc": detection.auc, "noise_f1": detection.f1, "noise_precision": detection.precision}
    if utility is not None:
        fractions = (0.0, 0.05, 0.1, 0.15, 0.2)
        _, low_first = point_removal_curve(result, utility, fractions, highest_first=False)
        _, high_first = point_removal_curve(result, utility, fractions, highest_first=True)
        metrics["removal_curve"] = {"fraction": list(fractions), "low_first": low_first.tolist(),
                                    "high_first": high_first.tolist()}
    with open_platform(store) as platform:
        run_id = record_valuation(platform, result, dataset_id=data["dataset_id"], flipped=data["flipped"],
                                  metrics=metrics)
    return {"run_id": run_id, "values": result.values, "auc": detection.auc, "method": result.method}


def _utility(data):
    from alloyml.valuation import pipeline_utility

    return pipeline_utility(scaled_logistic_pipeline(), data["x_train"], data["y_train"], data["x_test"],
                            data["y_test"])


@step(num_cpus=1)
def value_knn(store: dict, data: dict, config: dict) -> dict:
    """KNN-Shapley of the source rows through the pipeline's scaler (the DataScope idea)."""
    from alloyml.valuation import pipeline_knn_shapley

    fitted = scaled_logistic_pipeline().fit(data["x_train"], data["y_train"])
    result = pipeline_knn_shapley(fitted, data["x_train"], data["y_train"], data["x_test"], data["y_test"],
                                  k=config["knn_k"])
    return _record(store, data, result, _utility(data))


@step(num_cpus=1)
def value_banzhaf(store: dict, data: dict, config: dict) -> dict:
    """Data Banzhaf (maximum sample reuse) of the whole pipeline, refitted on sampled subsets."""
    from alloyml.valuation import MaxSamples, msr_banzhaf

    result = msr_banzhaf(_utility(data), MaxSamples(config["banzhaf_samples"]), seed=config["seed"])
    return _record(store, data, result)


@step(num_cpus=1)
def value_tracin(store: dict, data: dict, config: dict) -> dict:
    """TracIn self-influence of a small torch MLP trained on the noisy rows, from its checkpoints."""
    import torch
    import torch.nn.functional as F

    from alloyml.valuation.influence import TrainingCheckpoint, self_influence

    torch.manual_seed(config["seed"])
    mean, std = data["x_train"].mean(0), data["x_train"].std(0) + 1e-8
    x = torch.tensor((data["x_train"] - mean) / std, dtype=torch.float32)
    y = torch.as_tensor(data["y_train"], dtype=torch.long)
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, int(y.max()) + 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    checkpoints, epochs = [], config["tracin_epochs"]
    for epoch in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
        if (epoch + 1) % max(1, epochs // 5) == 0:
            checkpoints.append(TrainingCheckpoint({k: v.clone() for k, v in model.state_dict().items()}, 0.05))
    return _record(store, data, self_influence(model, checkpoints, (x, y), F.cross_entropy))


@step(num_cpus=1)
def clean_and_retrain(store: dict, data: dict, knn: dict, banzhaf: dict, tracin: dict, config: dict) -> dict:
    """Drop the lowest-valued rows (by the pipeline-aware KNN-Shapley values, which need no labels of
    the noise) and retrain; report the gain over the model trained on the noisy rows."""
    keep = np.argsort(knn["values"])[int(round(config["remove_fraction"] * len(knn["values"]))):]
    noisy_model = scaled_logistic_pipeline().fit(data["x_train"], data["y_train"])
    clean_model = scaled_logistic_pipeline().fit(data["x_train"][keep], data["y_train"][keep])
    noisy_acc = float(noisy_model.score(data["x_test"], data["y_test"]))
    clean_acc = float(clean_model.score(data["x_test"], data["y_test"]))
    removed = np.setdiff1d(np.arange(len(knn["values"])), keep)
    caught = float(np.isin(removed, data["flipped"]).mean())
    metrics = {"noisy_accuracy": noisy_acc, "cleaned_accuracy": clean_acc, "gain": clean_acc - noisy_acc,
               "removed": int(len(removed)), "removed_that_were_flipped": caught,
               "auc_by_method": {r["method"]: r["auc"] for r in (knn, banzhaf, tracin)}}
    with open_platform(store) as platform:
        with platform.run("train", name="retrain without lowest-valued rows",
                          params={"removed_by": knn["method"], "remove_fraction": config["remove_fraction"]},
                          dataset_id=data["dataset_id"]) as run:
            run.log_metrics(**metrics)
            noisy = platform.register_model("logreg-noisy", "sklearn:Pipeline", metrics={"accuracy": noisy_acc})
            platform.register_model("logreg-cleaned", "sklearn:Pipeline", metrics={"accuracy": clean_acc},
                                    parents=[(noisy.id, "fine-tune")])
    return metrics
