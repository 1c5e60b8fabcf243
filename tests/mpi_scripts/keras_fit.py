"""Run under ``mpiexec -n 2`` by tests/test_distributed.py (argv[1]: a scratch folder).
Keras ``fit`` on 2 ranks with per-rank batch b equals one process with batch 2b; output,
checkpoints and warnings come from rank 0 only; a NaN on one rank stops every rank."""
import os
import sys

import numpy as np

import nnx
import nnx.distributed as dist
from nnx import nn, optim
from nnx.callbacks import Callback, ModelCheckpoint

folder = sys.argv[1]
dist.init()
R, W = dist.rank(), dist.world_size()
# what each rank prints (fit's bars, callbacks, warnings) goes to its own files for the test
sys.stdout = open(os.path.join(folder, f"stdout-{R}.txt"), "w")
sys.stderr = open(os.path.join(folder, f"stderr-{R}.txt"), "w")


def fail(msg):
    print(f"FAIL rank {R}: {msg}", file=sys.__stdout__, flush=True)
    sys.exit(1)


class Marker(Callback):
    def on_epoch_end(self, epoch, logs=None):
        print(f"MARK epoch {epoch + 1} loss={logs['loss']:.6f}", flush=True)


def build(seed):
    nnx.manual_seed(seed)
    m = nn.Sequential()
    m.add(nn.Dense(16, input_dim=5, activation="relu"))
    m.add(nn.Dense(3, activation="softmax"))
    m.compile(optimizer=optim.SGD(m.parameters(), lr=0.1, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


rng = np.random.default_rng(0)
x = rng.standard_normal((64, 5)).astype(np.float32)
y = rng.integers(0, 3, 64)
xv = rng.standard_normal((20, 5)).astype(np.float32)
yv = rng.integers(0, 3, 20)

model = build(0 if R == 0 else 3)  # rank 1 starts elsewhere: fit copies rank 0's weights
ckpt = ModelCheckpoint(os.path.join(folder, "ckpt-{epoch}.npz"), save_weights_only=True)
hist = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=1,
                 validation_data=(xv, yv), callbacks=[Marker(), ckpt])
weights = [np.array(p.data) for p in model.parameters()]
every = dist.all_gather_objects(([w.tobytes() for w in weights], hist.history,
                                 ckpt.last_saved))
if every[0][0] != every[1][0]:
    fail("the ranks' weights differ after fit")
if every[0][1] != every[1][1]:
    fail(f"the ranks' histories differ: {every[0][1]} vs {every[1][1]}")
if every[1][2] is not None or every[0][2] != os.path.join(folder, "ckpt-3.npz"):
    fail(f"checkpoints: rank 0 wrote {every[0][2]}, rank 1 wrote {every[1][2]}")

# a NaN in the last batch of rank 1's shard only (row 63 goes to rank 1): every rank stops
xn = x.copy()
xn[63] = np.nan
nan_model = build(0)
nan_hist = nan_model.fit(xn, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
stops = dist.all_gather_objects((nan_hist.stop_reason, len(nan_hist.epoch), nan_hist.nan_batch))
if stops != [("nan", 1, 7), ("nan", 1, 7)]:
    fail(f"TerminateOnNaN not collective: {stops}")

dist.destroy_process_group()  # from here on a world of one: the single-process reference
ref = build(0)
ref_hist = ref.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
                   validation_data=(xv, yv))
err_w = max(float(np.abs(a - np.array(b.data)).max()) for a, b in zip(weights, ref.parameters()))
err_h = max(abs(a - b) for k in ref_hist.history for a, b in zip(hist.history[k],
                                                                  ref_hist.history[k]))
if not (err_w <= 1e-5 and err_h <= 1e-5):
    fail(f"2-rank fit differs from one process: weights {err_w:.3g}, history {err_h:.3g}")
sys.stdout.flush()
sys.stderr.flush()
if R == 0:
    print(f"CHECK keras-fit OK weights_err={err_w:.3g} history_err={err_h:.3g} "
          f"keys={sorted(hist.history)}", file=sys.__stdout__, flush=True)
    print("CHECK keras-nan OK", file=sys.__stdout__, flush=True)
