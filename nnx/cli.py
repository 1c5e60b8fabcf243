"""The ``nnx`` command line: ``nnx info``, ``nnx train``, ``nnx predict``, ``nnx export``,
``nnx bench``.

Also runs as ``python -m nnx``. ``main(argv)`` returns the exit status: 0 on success, 1 when
a file or the data is bad (one line on stderr, no traceback), 2 for wrong arguments (argparse),
141 (quietly) when the reader of stdout goes away (``nnx predict ... | head``).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

PROG = "nnx"

DATASETS = ("xor", "digits", "breast_cancer", "mnist")

# Per-dataset defaults, chosen so each run succeeds from any seed on a laptop CPU in seconds
# (digits: >= 0.95 test accuracy in about a second).
DEFAULTS = {
    "xor": dict(hidden="4", activation="tanh", optimizer="sgd", lr=None, epochs=500, batch_size=4),
    "digits": dict(hidden="128,64", activation="relu", optimizer="adam", lr=None, epochs=30,
                   batch_size=32),
    "breast_cancer": dict(hidden="32,16", activation="relu", optimizer="adam", lr=None,
                          epochs=50, batch_size=32),
    "mnist": dict(hidden="128,64", activation="relu", optimizer="adam", lr=None, epochs=5,
                  batch_size=128),
}
DEFAULT_LR = {("xor", "sgd"): 0.5, ("xor", "adam"): 0.05, "sgd": 0.1, "adam": 0.001}
# --model cnn (issue 10): the image datasets, as channels-last images, a small Keras CNN each
# (digits: >= 0.97 test accuracy in ~10 s on a 2-core CPU; mnist: PyTorch's MNIST example net)
CNN_IMAGES = {"digits": (8, 8, 1), "mnist": (28, 28, 1)}
CNN_DEFAULTS = {"digits": dict(optimizer="adam", epochs=20, batch_size=32),
                "mnist": dict(optimizer="adam", epochs=1, batch_size=128)}


class CLIError(Exception):
    """A problem to report as one line (exit status 1)."""


class UsageError(CLIError):
    """A wrong or missing argument that argparse cannot see (exit status 2)."""


# ============================================================================ parser
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints the usage first; keep it short)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def _positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or not np.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}")
    return v


def _hidden(s):
    s = s.strip()
    if s in ("", "none", "0"):
        return []
    try:
        sizes = [int(p) for p in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 128,64, got {s!r}") from None
    if any(v < 1 for v in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {s!r}")
    return sizes


def _shape(s):
    try:
        dims = tuple(int(p) for p in s.replace("x", ",").split(",") if p.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive sizes such as 1,28,28, got {s!r}")
    return dims


def _device(s):
    from . import backends

    try:
        return backends.parse_device(s)
    except (ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"unknown device {s!r}: expected cpu, cuda, cuda:N or auto") from None


def build_parser():
    p = _Parser(prog=PROG, description="nnx: a small neural-network framework on NumPy (CPU) "
                                       "and CuPy (GPU).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    sub.add_parser("info", help="versions, BLAS, devices and which one 'auto' picks",
                   description="Print the versions of nnx, Python, NumPy, CuPy and CUDA, the "
                               "BLAS NumPy uses, every device, and the one --device auto picks.")

    t = sub.add_parser("train", help="train a classifier on a bundled dataset",
                       description="Train a multilayer perceptron (or, with --model cnn, a "
                                   "small convolutional net on digits or mnist) and print its "
                                   "test accuracy and the time per epoch. Defaults depend on "
                                   "the dataset: "
                                   + "; ".join(f"{k}: hidden {v['hidden']} {v['activation']}, "
                                               f"{v['optimizer']}, {v['epochs']} epochs, batch "
                                               f"{v['batch_size']}"
                                               for k, v in DEFAULTS.items()) + ".")
    t.add_argument("dataset", choices=DATASETS,
                   help="xor (the 4-row truth table), digits and breast_cancer (bundled with "
                        "scikit-learn), mnist (IDX files in --data-dir)")
    t.add_argument("--device", type=_device, default="auto",
                   help="cpu, cuda, cuda:N or auto (default: auto = a GPU if usable, else cpu)")
    t.add_argument("--epochs", type=_positive_int, help="passes over the training data")
    t.add_argument("--batch-size", type=_positive_int, help="samples per gradient step")
    t.add_argument("--lr", type=_positive_float,
                   help="learning rate (default: 0.001 for adam, 0.1 for sgd; xor: 0.05 / 0.5)")
    t.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                   help="mlp (default: Dense layers, --hidden/--activation) or cnn (digits and "
                        "mnist as 1-channel images: a small convolutional net; digits: "
                        "conv 16, conv 32, max-pool, dense 64; mnist: PyTorch's MNIST example, "
                        "conv 32, conv 64, max-pool, dense 128, with dropout)")
    t.add_argument("--hidden", type=_hidden,
                   help="hidden layer sizes, comma-separated, e.g. 128,64 ('none' for none)")
    t.add_argument("--activation", choices=("relu", "tanh", "sigmoid", "leaky_relu"),
                   help="activation of the hidden layers")
    t.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="adam, or sgd (with momentum 0.9)")
    t.add_argument("--save", metavar="PATH",
                   help="write the trained model (weights and architecture) to PATH (.npz)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    t.add_argument("--test-size", type=float, default=0.2,
                   help="held-out fraction for digits and breast_cancer (default: 0.2)")
    t.add_argument("--data-dir", metavar="DIR", default=os.environ.get("NNX_MNIST_DIR"),
                   help="mnist only: folder with the four IDX files, plain or .gz (default: "
                        "$NNX_MNIST_DIR); nothing is downloaded")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--distributed", action="store_true",
                   help="data-parallel over the processes of mpirun/mpiexec/srun (nnx."
                        "distributed; --batch-size is split over the ranks); rank 0 prints "
                        "and saves")

    pr = sub.add_parser("predict", help="predict with a model saved by 'nnx train --save'",
                        description="Load a model saved by 'nnx train --save' (its architecture "
                                    "is stored beside the weights, as data) and predict the "
                                    "rows of DATA: class labels, or probabilities with --proba.")
    pr.add_argument("model", help="the .npz file written by 'nnx train --save'")
    pr.add_argument("data", help="features, one row per sample: .npy, or .csv/.txt "
                                 "(comma-separated); raw values (the saved standardization is "
                                 "applied)")
    pr.add_argument("--out", metavar="PATH", help="write the predictions to PATH (.npy) instead "
                                                  "of printing them")
    pr.add_argument("--proba", action="store_true",
                    help="class probabilities instead of labels")
    pr.add_argument("--device", type=_device, default="cpu",
                    help="cpu, cuda, cuda:N or auto (default: cpu)")
    pr.add_argument("--batch-size", type=_positive_int, default=256)

    ex = sub.add_parser("export", help="write a saved model as an ONNX file",
                        description="Convert a model saved by 'nnx train --save' or Keras's "
                                    "model.save (.npz) into an ONNX file for onnxruntime, with a "
                                    "dynamic batch axis. A saved standardization (nnx train) "
                                    "becomes the graph's first nodes, so the ONNX model takes "
                                    "raw features, as 'nnx predict' does.")
    ex.add_argument("model", help="the .npz (or .nnx) model file")
    ex.add_argument("output", help="the ONNX file to write (.onnx)")
    ex.add_argument("--input-shape", type=_shape, metavar="D1,D2,...",
                    help="the shape of one input sample, batch axis left out (e.g. 1,28,28), "
                         "for a model whose first layer does not tell it")
    ex.add_argument("--opset", type=_positive_int, default=17, help="ONNX opset (default: 17)")
    ex.add_argument("--fixed-batch", type=_positive_int, metavar="N",
                    help="a fixed batch size N instead of a dynamic batch axis")

    sub.add_parser("bench", help="run the benchmark suite (arguments go to it; "
                                 "'nnx bench --help' lists them); writes its JSON and PNG "
                                 "into the current folder, or --out DIR", add_help=False)
    return p


# ============================================================================ commands
def _version():
    try:
        import nnx

        return nnx.__version__
    except Exception:  # noqa: BLE001 - --version must work even if nnx is broken
        return "unknown"


def _blas_lines():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    lines = []
    if threadpool_info is not None:
        for lib in threadpool_info():
            if lib.get("user_api") == "blas":
                lines.append(f"{lib.get('internal_api', '?')} {lib.get('version') or ''}".strip()
                             + f" ({lib.get('num_threads')} threads"
                             + (f", {lib['architecture']} kernels" if lib.get("architecture")
                                else "") + f") at {lib.get('filepath')}")
        if lines:
            return lines
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return [f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
                + " (from numpy.show_config; pip install threadpoolctl for the loaded library)"]
    except Exception:  # noqa: BLE001 - older NumPy: no dict mode
        return ["unknown (pip install threadpoolctl to see it)"]


def _cupy_version():
    from importlib import metadata

    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if name == "cupy" or name.startswith("cupy-cuda"):
            return f"{dist.version} ({dist.metadata.get('Name')})"
    return None


def cmd_info(args):
    from . import backends
    import nnx

    print(f"nnx {nnx.__version__}")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"NumPy {np.__version__}")
    for i, line in enumerate(_blas_lines()):
        print(("BLAS  " if i == 0 else "      ") + line)
    cupy_v = _cupy_version()
    print(f"CuPy {cupy_v}" if cupy_v else "CuPy not installed (pip install 'nnx[cuda]' for GPUs)")
    ok, why = backends.cuda_status()
    if ok:
        try:
            from .backends.cupy_backend import cuda_versions

            rt, drv = cuda_versions()
            print(f"CUDA runtime {rt // 1000}.{rt % 1000 // 10}, driver {drv // 1000}."
                  f"{drv % 1000 // 10}: usable, {why}")
        except Exception as e:  # noqa: BLE001 - still report what we know
            print(f"CUDA usable: {why} (version query failed: {e})")
    else:
        print(f"CUDA not usable: {why}")
    print("devices:")
    for dev in backends.all_backends():
        desc = "NumPy on the CPU" if dev == "cpu" else _gpu_name(dev)
        print(f"  {dev:8s} {desc}")
    auto = nnx._config.resolve_device("auto")
    print(f"auto picks: {auto}")
    return 0


def _gpu_name(dev):
    try:
        from .backends.cupy_backend import device_description

        return device_description(int(dev.split(":")[1]))
    except Exception:  # noqa: BLE001
        return "CUDA GPU, CuPy"


def _load_dataset(args):
    """(x_train, y_train, x_test, y_test, classes, standardized) as host arrays."""
    from nnx import datasets

    name = args.dataset
    if name == "xor":
        x, y = datasets.xor()
        return x, y.ravel().astype(np.int64), x, y.ravel().astype(np.int64), False
    if name == "mnist":
        if not args.data_dir:
            raise UsageError("nnx train mnist needs --data-dir DIR (or $NNX_MNIST_DIR): a folder "
                           "with the four MNIST IDX files (nnx never downloads)")
        xtr, ytr = datasets.mnist(args.data_dir, "train")
        xte, yte = datasets.mnist(args.data_dir, "test")
        return xtr, ytr, xte, yte, False
    loader = datasets.digits if name == "digits" else datasets.breast_cancer
    x, y = loader()
    if not 0.0 < args.test_size < 1.0:
        raise UsageError(f"--test-size must lie in (0, 1), got {args.test_size}")
    xtr, xte, ytr, yte = datasets.train_test_split(x, y, test_size=args.test_size,
                                                   seed=args.seed, stratify=True)
    return xtr, ytr, xte, yte, True


def cmd_train(args):
    import nnx
    from nnx import datasets, nn, optim

    d = DEFAULTS[args.dataset]
    cnn = getattr(args, "model", "mlp") == "cnn"
    if cnn:
        if args.dataset not in CNN_IMAGES:
            raise UsageError(f"--model cnn needs image data (digits or mnist), not "
                             f"{args.dataset}")
        if args.hidden is not None or args.activation is not None:
            raise UsageError("--hidden and --activation are for --model mlp")
        d = dict(d, **CNN_DEFAULTS[args.dataset])
    epochs = args.epochs or d["epochs"]
    batch_size = args.batch_size or d["batch_size"]
    hidden = args.hidden if args.hidden is not None else _hidden(d["hidden"])
    activation = args.activation or d["activation"]
    opt_name = args.optimizer or d["optimizer"]
    lr = args.lr or DEFAULT_LR.get((args.dataset, opt_name), DEFAULT_LR[opt_name])

    if args.save:  # fail before training, not after it
        from nnx.keras.paths import check_save_path
        try:
            check_save_path(args.save, "--save")
        except ValueError as e:
            raise UsageError(str(e)) from None
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            raise CLIError(f"cannot write {args.save}: folder {folder!r} does not exist")
        if not os.access(folder, os.W_OK):
            raise CLIError(f"cannot write {args.save}: folder {folder!r} is not writable")
    try:
        nnx.set_device(args.device)
    except nnx.DeviceError as e:
        raise CLIError(str(e)) from None
    if getattr(args, "distributed", False):
        try:
            nnx.distributed.init()
        except ImportError as e:
            raise CLIError(str(e)) from None
        if nnx.distributed.rank() != 0:  # the ranks train one model: rank 0 speaks for them
            sys.stdout = open(os.devnull, "w")
            args.save = None
        batch_size = max(1, batch_size // nnx.distributed.world_size())
        print(f"nnx.distributed: {nnx.distributed.world_size()} ranks "
              f"({nnx.distributed.backend()}), {batch_size} rows per rank and step")
    nnx.manual_seed(args.seed)
    xtr, ytr, xte, yte, scale = _load_dataset(args)
    mean = std = None
    if scale:
        xtr, xte, mean, std = datasets.standardize(xtr, xte, return_stats=True)
    classes = np.unique(ytr)
    if not np.array_equal(classes, np.arange(len(classes))):
        raise CLIError(f"labels must be 0..C-1, got {classes[:10]}")
    n_classes = len(classes)
    binary = n_classes == 2
    n_features = int(xtr.shape[1])

    model = nn.Sequential()
    size = n_features
    if cnn:
        image = CNN_IMAGES[args.dataset]
        if n_features != int(np.prod(image)):
            raise CLIError(f"{args.dataset}: expected images of {image[0]}x{image[1]} pixels, "
                           f"got {n_features} features")
        xtr, xte = xtr.reshape((-1,) + image), xte.reshape((-1,) + image)
        _add_cnn(model, args.dataset, image)
        hidden = [None]  # the output layer takes its input size from the layers before it
    for i, h in enumerate([] if cnn else hidden):
        model.add(nn.Dense(h, input_dim=size if i == 0 else None, activation=activation))
        size = h
    if binary:
        model.add(nn.Dense(1, input_dim=None if hidden else size, activation="sigmoid"))
        loss = "binary_crossentropy"
        ytr_fit = ytr.astype(np.float32).reshape(-1, 1)
        yte_fit = yte.astype(np.float32).reshape(-1, 1)
    else:
        model.add(nn.Dense(n_classes, input_dim=None if hidden else size, activation="softmax"))
        loss = "sparse_categorical_crossentropy"
        ytr_fit, yte_fit = ytr, yte
    params = list(model.parameters())
    opt = optim.SGD(params, lr=lr, momentum=0.9) if opt_name == "sgd" else optim.Adam(params, lr=lr)
    model.compile(optimizer=opt, loss=loss, metrics=["accuracy"])

    device = model.device
    arch = " -> ".join(_describe(m) for m in model.layers)
    print(f"nnx train {args.dataset}: {len(xtr)} training / {len(xte)} test samples, "
          f"{n_features} features, {n_classes} classes; device {device}")
    print(f"model: {arch}; {opt_name} lr={lr:g}{' momentum=0.9' if opt_name == 'sgd' else ''}; "
          f"{epochs} epochs, batch {batch_size}, seed {args.seed}")
    t0 = time.perf_counter()
    history = model.fit(xtr, ytr_fit, epochs=epochs, batch_size=batch_size,
                        verbose=0 if args.quiet else 2)
    total = time.perf_counter() - t0
    loss_v, acc = model.evaluate(xte, yte_fit, batch_size=max(batch_size, 256))
    per_epoch = float(np.mean(history.epoch_seconds)) if history.epoch_seconds else 0.0
    if history.stop_reason:
        print(f"training stopped early: {history.stop_message or history.stop_reason}")
    what = "training-set" if args.dataset == "xor" else "test"
    print(f"{what} accuracy: {acc:.4f} (loss {loss_v:.4f})")
    print(f"time: {total:.2f} s for {len(history.epoch)} epochs, {per_epoch * 1e3:.1f} ms per "
          f"epoch on {device}")
    if args.save:
        extra = {"dataset": args.dataset, "task": "binary" if binary else "multiclass",
                 "classes": [int(c) for c in classes], "n_features": n_features,
                 "mean": mean, "std": std, "test_accuracy": float(acc)}
        if cnn:  # nnx predict reshapes rows of pixels to this before predicting
            extra["input_shape"] = list(CNN_IMAGES[args.dataset])
        try:
            model.save(args.save, extra=extra)
        except (OSError, TypeError, ValueError) as e:
            raise CLIError(f"cannot write {args.save}: {e}") from None
        print(f"saved the model to {args.save}")
    return 0


def _add_cnn(model, dataset, image):
    """The convolutional layers of ``--model cnn`` (Keras layers, channels-last images), up to
    the Flatten; the caller adds the output layer."""
    from nnx.keras import Conv2D, Dense, Dropout, Flatten, Input, MaxPooling2D

    model.add(Input(image))
    if dataset == "mnist":  # pytorch/examples mnist/main.py's Net
        layers = [Conv2D(32, 3, activation="relu"), Conv2D(64, 3, activation="relu"),
                  MaxPooling2D(2), Dropout(0.25), Flatten(), Dense(128, activation="relu"),
                  Dropout(0.5)]
    else:  # 8x8 digits: keep the size ('same'), pool once
        layers = [Conv2D(16, 3, padding="same", activation="relu"),
                  Conv2D(32, 3, padding="same", activation="relu"), MaxPooling2D(2),
                  Dropout(0.25), Flatten(), Dense(64, activation="relu")]
    for layer in layers:
        model.add(layer)


def _describe(m):
    """One layer of the model line ``nnx train`` prints."""
    name = type(m).__name__
    if hasattr(m, "units"):
        return f"{name}({m.units}, {m.activation})"
    if hasattr(m, "filters"):
        return f"{name}({m.filters}, {m.kernel_size[0]}x{m.kernel_size[1]}, {m.activation})"
    if hasattr(m, "pool_size"):
        return f"{name}({m.pool_size[0]}x{m.pool_size[1]})"
    if hasattr(m, "p"):
        return f"{name}({m.p:g})"
    return name


def _read_features(path):
    if not os.path.isfile(path):
        raise CLIError(f"data file {path!r} not found")
    low = path.lower()
    try:
        if low.endswith((".csv", ".txt", ".tsv")):
            delim = "\t" if low.endswith(".tsv") else ","
            arr = np.loadtxt(path, delimiter=delim, dtype=np.float64, ndmin=1)
        else:
            arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - any parse error is reported as one line
        raise CLIError(f"cannot read {path!r} as a .npy array (or .csv with that suffix): "
                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        raise CLIError(f"{path!r} is an .npz archive; give a single .npy array")
    if arr.dtype.kind not in "biuf":
        raise CLIError(f"{path!r} holds {arr.dtype} values, expected numbers")
    return arr


def cmd_predict(args):
    import nnx
    from nnx.keras import load_checkpoint

    if not os.path.isfile(args.model):
        raise CLIError(f"model file {args.model!r} not found")
    try:
        nnx.set_device(args.device)
    except nnx.DeviceError as e:
        raise CLIError(str(e)) from None
    try:
        model, extra = load_checkpoint(args.model)
    except (nnx.CheckpointError, OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"cannot load {args.model!r}: {str(e).splitlines()[0]}") from None
    x = _read_features(args.data)
    n_features = extra.get("n_features") or model[0].in_features
    if x.ndim == 1 and x.shape[0] == n_features:
        x = x.reshape(1, -1)
    if x.ndim != 2 or x.shape[1] != n_features:
        raise CLIError(f"{args.data!r} has shape {x.shape}; the model takes rows of "
                       f"{n_features} features (an array of shape (N, {n_features}))")
    if not np.isfinite(x).all():
        raise CLIError(f"{args.data!r} holds NaN or inf values")
    x = x.astype(np.float64)
    if extra.get("mean") is not None:
        x = (x - np.asarray(extra["mean"], np.float64)) / np.asarray(extra["std"], np.float64)
    if extra.get("input_shape"):  # a --model cnn: rows of pixels -> images
        x = x.reshape((-1,) + tuple(int(d) for d in extra["input_shape"]))
    probs = model.predict(x.astype(np.float32), batch_size=args.batch_size)
    classes = np.asarray(extra.get("classes") or range(max(probs.shape[1], 2)))
    if probs.shape[1] == 1:  # binary: P(class 1)
        probs = np.concatenate([1.0 - probs, probs], axis=1)
    labels = classes[probs.argmax(axis=1)]
    result = probs if args.proba else labels
    if args.out:
        try:
            np.save(args.out, result)
        except OSError as e:
            raise CLIError(f"cannot write {args.out!r}: {e}") from None
        what = "probabilities" if args.proba else "labels"
        print(f"wrote {len(result)} predicted {what} to {args.out}")
        return 0
    if args.proba:  # columns right-aligned under headers as wide as their widest entry
        heads = [f"p({c})" for c in classes]
        cells = [[f"{v:.4f}" for v in row] for row in probs]
        widths = [max([len(h)] + [len(r[j]) for r in cells]) for j, h in enumerate(heads)]
        lw = max([len("label")] + [len(str(lab)) for lab in labels])
        print(f"{'label':<{lw}}  " + "  ".join(f"{h:>{w}}" for h, w in zip(heads, widths)))
        for lab, row in zip(labels, cells):
            print(f"{str(lab):<{lw}}  " + "  ".join(f"{v:>{w}}" for v, w in zip(row, widths)))
    else:
        for lab in labels:
            print(lab)
    return 0


def cmd_export(args):
    import nnx
    from nnx.keras import load_checkpoint
    from nnx.keras.paths import SAVE_EXTENSIONS

    if os.path.splitext(args.output)[1].lower() != ".onnx":
        raise UsageError(f"{args.output!r}: the output file must end in .onnx")
    if not os.path.isfile(args.model):
        raise CLIError(f"model file {args.model!r} not found")
    if os.path.splitext(args.model)[1].lower() not in SAVE_EXTENSIONS:
        raise CLIError(f"{args.model!r} is not an nnx model file: expected "
                       f"{' or '.join(SAVE_EXTENSIONS)} (written by 'nnx train --save' or "
                       f"model.save)")
    try:
        nnx.set_device("cpu")
        model, extra = load_checkpoint(args.model)
    except (nnx.CheckpointError, OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"cannot load {args.model!r}: {str(e).splitlines()[0]}") from None
    shape = args.input_shape or nnx.onnx.input_shape_of(model)
    for key in ("input_shape", "n_features"):  # what nnx train --save recorded
        if shape is None and isinstance(extra.get(key), (int, list)):
            shape = tuple(extra[key]) if isinstance(extra[key], list) else (extra[key],)
    if shape is None:
        raise UsageError(f"cannot tell the input shape of {args.model!r} from its first layer; "
                         f"give it with --input-shape, e.g. --input-shape 1,28,28")
    note = ""
    if extra.get("mean") is not None and extra.get("std") is not None:
        size = np.asarray(extra["mean"]).size
        if size != int(np.prod(shape)):
            raise CLIError(f"{args.model!r}: the saved standardization has {size} entries, "
                           f"the input shape {tuple(shape)} has {int(np.prod(shape))}")
        model = nnx.onnx.with_standardization(model, extra["mean"], extra["std"], shape)
        note = " (with the saved standardization: it takes raw features)"
    dt = next(iter(model.parameters())).dtype
    x = np.random.default_rng(0).standard_normal((args.fixed_batch or 2,) + tuple(shape))
    try:
        proto = nnx.onnx.export(model, x.astype(dt), args.output, opset=args.opset,
                                dynamic_batch=args.fixed_batch is None)
    except (nnx.ExportError, nnx.ShapeError, nnx.DTypeError) as e:
        raise CLIError(str(e).splitlines()[0]) from None
    print(f"wrote {args.output}: {len(proto.graph.node)} ONNX nodes, opset {args.opset}, "
          f"input ({'batch' if args.fixed_batch is None else args.fixed_batch}, "
          f"{', '.join(map(str, shape))}) {np.dtype(dt).name}{note}")
    return 0


def cmd_bench(argv):
    try:
        from . import benchmarks
    except ImportError as e:
        raise CLIError(f"the benchmark suite is not available ({e}); it ships in the source "
                       f"tree: run 'nnx bench' from a checkout of nnx") from None
    main_fn = getattr(benchmarks, "main", None)
    if main_fn is None:
        raise CLIError("the installed 'benchmarks' package has no main(); run it from an nnx "
                       "checkout")
    argv = list(argv)
    if not any(a == "--out" or a.startswith("--out=") for a in argv):
        # the suite's own default is benchmarks/results/ in its package folder: from the
        # command line, write into the current folder instead (never into the installed package)
        argv = ["--out", os.getcwd()] + argv
    return int(main_fn(argv) or 0)


# ============================================================================ entry point
def _stdout_gone():
    """The reader of stdout went away (``nnx predict ... | head``): exit quietly as Unix tools
    do (status 141, 128 + SIGPIPE, and no message); stdout is pointed at the null device so
    that Python's final flush does not complain either."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (captured in a test)
        return 141
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass
    return 141


def main(argv=None):
    """Run the ``nnx`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit
    status (141, quietly, when stdout is a pipe whose reader has gone)."""
    try:
        status = _main(argv)
        sys.stdout.flush()  # a broken pipe shows here, not in Python's flush at exit
    except BrokenPipeError:
        return _stdout_gone()
    return status


def _main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "bench":  # everything after 'bench' belongs to the suite
            return cmd_bench(argv[1:])
        args = build_parser().parse_args(argv)
        if args.command == "info":
            return cmd_info(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "export":
            return cmd_export(args)
    except BrokenPipeError:
        raise  # main() exits quietly
    except CLIError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except (OSError, ValueError, ImportError) as e:
        # Bad data files, missing optional packages: one line, no traceback.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
