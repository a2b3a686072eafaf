"""TF-IDF (word + char n-grams) + logistic regression on validation: soi-mini's reference bar.

Not the official baseline (another module builds that); this only gives model selection a
number to beat.  ``python -m training.mini.tfidf_reference``
"""

from __future__ import annotations

import json

import numpy as np
from scipy.sparse import hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from soi_batch.datasets.osha import LABEL_COL, TEXT_COL, load_split


def main() -> dict[str, float]:
    parts, _ = load_split()
    tr, va = parts["train"], parts["validation"]
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True, lowercase=True)
    xtr = hstack([word.fit_transform(tr[TEXT_COL]), char.fit_transform(tr[TEXT_COL])]).tocsr()
    xva = hstack([word.transform(va[TEXT_COL]), char.transform(va[TEXT_COL])]).tocsr()
    out: dict[str, float] = {}
    y_div = va[LABEL_COL].str[:1].to_numpy()
    y_maj = va[LABEL_COL].str[:2].to_numpy()
    for level, n in (("division", 1), ("major_group", 2)):
        for c in (3.0, 10.0, 30.0):
            clf = LogisticRegression(C=c, max_iter=2000)
            clf.fit(xtr, tr[LABEL_COL].str[:n])
            pred = clf.predict(xva)
            y = y_div if n == 1 else y_maj
            out[f"{level}_acc@C={c}"] = float(np.mean(pred == y))
            out[f"{level}_macro_f1@C={c}"] = float(f1_score(y, pred, average="macro"))
            print(level, c, out[f"{level}_acc@C={c}"], out[f"{level}_macro_f1@C={c}"], flush=True)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
