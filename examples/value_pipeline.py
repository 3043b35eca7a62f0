"""Which training rows of a scikit-learn pipeline help, and which hurt?

Flips 10% of breast_cancer's labels, values every source row four ways and reports how well each finds
the flipped rows. Runs in about a minute on 2 cores:  python examples/value_pipeline.py
"""

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from alloyml import valuation as av

x, y = load_breast_cancer(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(x, y, train_size=300, random_state=0, stratify=y)
noisy, flipped = av.flip_labels(y_train, fraction=0.1, seed=0)

# 1. exact KNN-Shapley of the source rows, through the fitted preprocessing (seconds for 10^5 rows)
pipeline = make_pipeline(StandardScaler(), KNeighborsClassifier(5)).fit(x_train, noisy)
knn = av.pipeline_knn_shapley(pipeline, x_train, noisy, x_test, y_test, k=5)

# 2. Data-OOB: out-of-bag accuracy of bagged trees on each row (no test set needed)
oob = av.data_oob(av.Utility(DecisionTreeClassifier(), x_train, noisy, x_test, y_test), av.MaxSamples(200), seed=0)

# 3. TMC-Shapley and 4. MSR-Banzhaf, refitting the whole pipeline on sampled subsets
utility = av.pipeline_utility(make_pipeline(StandardScaler(), LogisticRegression()), x_train, noisy, x_test, y_test)
tmc = av.tmc_shapley(utility, av.MaxSamples(20), truncation_rtol=0.05, seed=0)
banzhaf = av.msr_banzhaf(utility, av.MaxSamples(2000), seed=0)

for result in (knn, oob, tmc, banzhaf):
    scores = av.noisy_label_detection(result, flipped)
    print(f"{result.method:22s} AUC {scores.auc:.3f}  F1 {scores.f1:.3f}  "
          f"median stderr {np.median(result.stderr):.4f}  fits {result.utility_evaluations}")
print("10 lowest-valued rows by KNN-Shapley:", knn.lowest(10), "(flipped:", np.isin(knn.lowest(10), flipped).sum(), ")")

fractions, accuracy = av.point_removal_curve(knn, utility, fractions=(0.0, 0.05, 0.1, 0.15), highest_first=False)
for fraction, score in zip(fractions, accuracy, strict=True):
    print(f"accuracy after removing the lowest-valued {fraction:.0%} of rows: {score:.3f}")
