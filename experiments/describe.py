"""What a result file says about itself besides its runs: the base RunSpec, the data set's constants
and the pixels of the test images its misclassified-example grid shows. The report reads these from
the result, never from the code, so a changed default cannot make it describe an old result wrongly.

Torch-free: the runner adds them to every result it writes, and `python -m experiments restat`
adds them to an older result of the current engine without retraining (the fingerprint guarantees
that the constants read here are the ones its runs used).
"""
from __future__ import annotations

import ast
import base64
import hashlib
from pathlib import Path

from .catalog import Experiment, RunSpec
from .results import ENGINE_DIR, PROJECT_ROOT, ResultError

DATA_CODE = ENGINE_DIR / "data.py"
RAW_DIR = PROJECT_ROOT / "data" / "FashionMNIST" / "raw"   # data.RAW_DIR (data.py imports torch)
TEST_IMAGES = "t10k-images-idx3-ubyte"
IDX_HEADER = 16   # magic, count, rows, columns: four big-endian int32


def source_constants(path: Path, *names: str) -> dict:
    """The literal values of module-level `NAME = ...` lines of a source file, parsed once (no
    import, no torch)."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        found.update({t.id: node.value for t in targets if isinstance(t, ast.Name) and t.id in names})
    missing = [n for n in names if n not in found]
    if missing:
        raise ResultError(f"{path.relative_to(PROJECT_ROOT)} has no constant {', '.join(missing)}")
    return {n: ast.literal_eval(found[n]) for n in names}


def _idx_shape(path: Path) -> list[int]:
    """[count, rows, columns] from an IDX image file's header."""
    with open(path, "rb") as f:
        head = f.read(IDX_HEADER)
    return [int.from_bytes(head[i:i + 4], "big") for i in (4, 8, 12)]


def data_constants(raw_dir: Path = RAW_DIR) -> dict:
    """The data set as the engine used it: class names, split, the originals' SHA-256 digests, and
    the image counts and size read from the verified IDX files themselves."""
    consts = source_constants(DATA_CODE, "CLASSES", "VAL_PER_CLASS", "SPLIT_SEED", "SHA256")
    try:
        train, test = _idx_shape(raw_dir / "train-images-idx3-ubyte"), _idx_shape(raw_dir / TEST_IMAGES)
    except OSError as err:
        raise ResultError(f"cannot read the data set's IDX files in {raw_dir} ({err}); run `make data`") from None
    return {"classes": consts["CLASSES"], "val_per_class": consts["VAL_PER_CLASS"], "split_seed": consts["SPLIT_SEED"],
            "sha256": consts["SHA256"], "train_images": train[0], "test_images": test[0], "image_size": test[1:]}


def test_pixels(indices, raw_dir: Path = RAW_DIR) -> dict:
    """index -> base64 of the 28 x 28 uint8 pixels (row-major) of those test images, from the
    verified original file (its digest is checked again here)."""
    path = raw_dir / TEST_IMAGES
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ResultError(f"cannot read {path} ({err.strerror}); run `make data`") from None
    if hashlib.sha256(raw).hexdigest() != source_constants(DATA_CODE, "SHA256")["SHA256"][TEST_IMAGES]:
        raise ResultError(f"{path} is not the original Fashion-MNIST test set; run `make data`")
    _, rows, cols = _idx_shape(path)
    size = rows * cols
    return {str(i): base64.b64encode(raw[IDX_HEADER + i * size:IDX_HEADER + (i + 1) * size]).decode()
            for i in sorted(set(indices))}


def describe(result: dict, exp: Experiment, raw_dir: Path = RAW_DIR) -> dict:
    """`result` with its self-description: `base` (the RunSpec defaults every variant starts from),
    `data` (data_constants) and, for an experiment whose figures show misclassified test images,
    `examples` (their pixels)."""
    result["base"] = RunSpec().as_dict()
    result["data"] = data_constants(raw_dir)
    if "confusion" in exp.figures:
        wrong = [item["index"] for v in result["variants"] for r in v["runs"]
                 for item in r["final"].get("misclassified") or []]
        result["examples"] = {"encoding": "base64 of 28 x 28 uint8 pixels, row-major, as in the IDX file",
                              "images": test_pixels(wrong, raw_dir)}
    return result
