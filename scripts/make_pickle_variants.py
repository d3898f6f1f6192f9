#!/usr/bin/env python3
"""Write the pickle variants of tests/fixtures/pickles/variants/ (issue 15): the forms in
which users really hold MulT / MMSA dataset pickles, as Python's own pickle + numpy write
them. Deterministic content; run from the repository root:

    python3 scripts/make_pickle_variants.py [OUT_DIR]

(default OUT_DIR tests/fixtures/pickles/variants). Needs numpy (any 1.x or 2.x).

Every file is a tiny dataset: 3 splits of N = 4 / 2 / 3 samples, text (N, 3, 2),
audio (N, 4, 2), vision (N, 5, 3) float32 with value k + 0.5 at the last frame of sample
k (left padded), labels (N, 1, 1) = k - 1.5 (sentiment) unless said otherwise. Ids are
`v{split}{k}` where split is the split's first letter, e.g. `vt0`, `vv1`, `vs2` (s = test).
"""
import os
import pickle
import sys

import numpy as np

SIZES = {"train": 4, "valid": 2, "test": 3}
LETTER = {"train": "t", "valid": "v", "test": "s"}


def features(n, t, d):
    a = np.zeros((n, t, d), dtype=np.float32)
    for k in range(n):
        a[k, -1, :] = k + 0.5
    return a


def ids(split):
    return [f"v{LETTER[split]}{k}" for k in range(SIZES[split])]


def mult_split(split, id_array):
    n = SIZES[split]
    s = {
        "text": features(n, 3, 2),
        "audio": features(n, 4, 2),
        "vision": features(n, 5, 3),
        "labels": (np.arange(n, dtype=np.float32) - 1.5).reshape(n, 1, 1),
    }
    if id_array is not None:
        s["id"] = id_array(split)
    return s


def mult(id_array=None):
    return {split: mult_split(split, id_array) for split in SIZES}


def three_columns(split, dtype):
    """MulT's id layout: (N, 3) = [segment id, start, end]."""
    rows = [[i, f"{k}.0", f"{k}.5"] for k, i in enumerate(ids(split))]
    return np.array(rows, dtype=dtype)


def write(out, name, obj, protocol):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pickles/variants"
    os.makedirs(out, exist_ok=True)

    # MOSI-style ids: fixed-width bytes, np.array([b'..', ..]) -> dtype |S<n>.
    write(out, "ids_S_p2.pkl",
          mult(lambda s: np.array([[i.encode(), b"0", b"1"] for i in ids(s)])), 2)
    write(out, "ids_S_p5.pkl", mult(lambda s: np.array([i.encode() for i in ids(s)])), 5)
    # MOSEI / IEMOCAP-style ids: fixed-width unicode <U<n>, (N, 3) and (N,), both byte
    # orders; a non-ASCII id checks the UCS-4 decoding.
    write(out, "ids_U_p4.pkl", mult(lambda s: three_columns(s, "<U10")), 4)
    write(out, "ids_U_be_p3.pkl",
          mult(lambda s: np.array(ids(s), dtype=">U7")), 3)
    write(out, "ids_U_p5.pkl", mult(lambda s: np.array(
        [i + "é" if k == 0 else i for k, i in enumerate(ids(s))], dtype="<U12")), 5)
    # Object arrays mixing str and bytes, and a plain Python list.
    write(out, "ids_object_mixed_p4.pkl", mult(lambda s: np.array(
        [i.encode() if k % 2 else i for k, i in enumerate(ids(s))], dtype=object)), 4)
    write(out, "ids_list_p2.pkl", mult(lambda s: list(ids(s))), 2)

    # Shared references: the same split object twice (memo), and one array in two keys.
    d = mult(lambda s: np.array(ids(s), dtype=object))
    d["valid"] = d["test"]
    d["train"]["vision"] = np.zeros((4, 5, 2), dtype=np.float32)
    d["train"]["audio"] = d["train"]["vision"]
    write(out, "shared_refs_p4.pkl", d, 4)
    write(out, "shared_refs_p2.pkl", d, 2)

    # Keys mica does not read, with dtypes it does not convert (complex, datetime,
    # structured, float16, a nested dict): the file must still load.
    d = mult()
    for split in SIZES:
        n = SIZES[split]
        d[split]["meta_complex"] = np.ones((n, 2), dtype=np.complex128)
        d[split]["meta_time"] = np.array(["2020-01-01"] * n, dtype="datetime64[ns]")
        d[split]["meta_struct"] = np.zeros(n, dtype=[("a", "<i4"), ("b", "<f8")])
        d[split]["meta_half"] = np.ones((n,), dtype=np.float16) * 1.5
        d[split]["meta_dict"] = {"source": "unit test", "n": n}
    write(out, "unknown_keys_p4.pkl", d, 4)
    write(out, "unknown_keys_p5.pkl", d, 5)

    # A key mica DOES read with a dtype it does not convert: an error naming it.
    d = mult()
    d["test"]["audio"] = d["test"]["audio"].astype(np.complex64)
    write(out, "used_key_complex_p4.pkl", d, 4)

    # Non-finite labels: train 1 NaN, test +inf and -inf (2 values in 2 samples).
    d = mult(lambda s: np.array(ids(s), dtype=object))
    d["train"]["labels"][1, 0, 0] = np.nan
    d["test"]["labels"][0, 0, 0] = np.inf
    d["test"]["labels"][2, 0, 0] = -np.inf
    write(out, "nan_labels_p4.pkl", d, 4)
    # IEMOCAP one-hot labels with a NaN in valid sample 1.
    d = mult()
    for split in SIZES:
        n = SIZES[split]
        lab = np.zeros((n, 4, 2), dtype=np.float32)
        lab[:, :, 0] = 1.0
        lab[:, 1, :] = [0.0, 1.0]
        d[split]["labels"] = lab
    d["valid"]["labels"][1, 2, 0] = np.nan
    write(out, "nan_labels_iemocap_p4.pkl", d, 4)

    # MMSA layout (end padding, length fields) with length fields that are not whole
    # numbers or do not fit the array.
    def mmsa(lengths):
        out_d = {}
        for split in SIZES:
            n = SIZES[split]
            audio = np.zeros((n, 4, 2), dtype=np.float32)
            vision = np.zeros((n, 5, 3), dtype=np.float32)
            for k in range(n):
                audio[k, : k % 4 + 1, :] = 1.0
                vision[k, : k % 5 + 1, :] = 1.0
            out_d[split] = {
                "raw_text": [f"text {k}" for k in range(n)],
                "text": features(n, 3, 2),
                "audio": audio,
                "vision": vision,
                "audio_lengths": lengths(split, [k % 4 + 1 for k in range(n)]),
                "vision_lengths": [k % 5 + 1 for k in range(n)],
                "regression_labels": np.arange(n, dtype=np.float32) - 1.0,
                "classification_labels": np.zeros(n, dtype=np.float32),
                "annotations": ["Neutral"] * n,
                "id": np.array([f"vid$_${k}" for k in range(n)]),
            }
        return out_d

    write(out, "mmsa_lengths_ok_p4.pkl",
          mmsa(lambda s, l: np.array(l, dtype=np.float64)), 4)
    write(out, "mmsa_lengths_fraction_p4.pkl",
          mmsa(lambda s, l: np.array(l, dtype=np.float64) + (0.9 if s == "valid" else 0)), 4)
    write(out, "mmsa_lengths_nan_p4.pkl",
          mmsa(lambda s, l: np.array([np.nan if s == "test" and k == 1 else x
                                      for k, x in enumerate(l)])), 4)
    write(out, "mmsa_lengths_beyond_p4.pkl",
          mmsa(lambda s, l: [x + 10 if s == "train" and k == 2 else x
                             for k, x in enumerate(l)]), 4)

    # An HTML page saved under a data file's name (what a dead download link gives).
    with open(os.path.join(out, "html_page_saved_as.pkl"), "w") as f:
        f.write("<!DOCTYPE html>\n<html><head><title>Google Drive - Virus scan warning"
                "</title></head><body>Download anyway</body></html>\n")


if __name__ == "__main__":
    main()
