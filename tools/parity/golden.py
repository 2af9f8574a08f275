"""The golden file: the reference's arrays (npz), its manifest (schema and a few constants) and the
optional float64 ResNet file."""
from __future__ import annotations

import copy
import pathlib

import numpy as np


class Golden:
    """The arrays of a golden npz, plus its manifest descriptions and float64 ResNet file if present.

    The manifest (`<stem>_manifest.txt`) is the file's schema: one line 'key<TAB>shape<TAB>dtype<TAB>
    description' per array. The few constants recorded only there (fixed jitter factors, blur sigmas
    of the 224 px taps, the LR batch size of group b) are read from it.
    """

    def __init__(self, path, manifest=None, f64=None):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"golden file {self.path} not found; pass --golden PATH to a file "
                                    "with the schema of tools/golden/byol_golden_manifest.txt.")
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                self.arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # zipfile.BadZipFile, pickled objects, truncated files
            raise ValueError(f"cannot read {self.path} as an .npz of plain arrays ({exc}); pass the "
                             "golden file written by the reference run.") from exc
        stem = self.path.with_suffix("")
        manifest = pathlib.Path(manifest) if manifest else pathlib.Path(f"{stem}_manifest.txt")
        self.manifest_path = manifest if manifest.is_file() else None
        self.descriptions = {}
        if self.manifest_path:
            for line in self.manifest_path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 4:
                    self.descriptions[parts[0]] = parts[3]
        f64 = pathlib.Path(f64) if f64 else pathlib.Path(f"{stem}_resnet_f64.npz")
        self.f64 = {}
        self.f64_path = f64 if f64.is_file() else None
        if self.f64_path:
            with np.load(f64, allow_pickle=False) as npz:
                self.f64 = {k: npz[k] for k in npz.files}

    def __getitem__(self, key):
        return self.arrays[key]

    def __contains__(self, key):
        return key in self.arrays

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.arrays if k.startswith(prefix))

    def tree(self, prefix: str) -> dict[str, np.ndarray]:
        """{rest: array} for every key '<prefix><rest>' (prefix ends with '/')."""
        return {k[len(prefix):]: v for k, v in self.arrays.items() if k.startswith(prefix)}

    def describe(self, key: str) -> str | None:
        return self.descriptions.get(key)

    def with_arrays(self, arrays: dict[str, np.ndarray]) -> "Golden":
        """A copy with some arrays replaced; the manifest and the float64 file are shared."""
        other = copy.copy(self)
        other.arrays = {**self.arrays, **arrays}
        return other


def number(token: str) -> float:
    """'p0.25' -> 0.25, 'm0.3' -> -0.3, '1.3' -> 1.3 (the golden file's key spelling)."""
    if token.startswith("p"):
        return float(token[1:])
    if token.startswith("m"):
        return -float(token[1:])
    return float(token)
