"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: data-parallel training equals
one process on the whole batch; the replicas stay bit-identical; construction checks and
broadcasts; DistributedSampler's shards. Prints ``CHECK <name> OK ...`` per passed check (rank
0) and exits 1 on the first failure."""
import hashlib
import sys

import numpy as np

import nnx
import nnx.distributed as dist
from nnx import nn, optim
from nnx.data import DataLoader, DistributedSampler

dist.init()
R, W = dist.rank(), dist.world_size()
assert W == 2, W
assert dist.backend() == "mpi", dist.backend()


def say(msg):
    if R == 0:
        print(msg, flush=True)


def fail(msg):
    print(f"FAIL rank {R}: {msg}", flush=True)
    sys.exit(1)


def make_model(seed):
    nnx.manual_seed(seed)
    return nn.container.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def data(dtype, B=16):
    rng = np.random.default_rng(123)
    return rng.standard_normal((B, 6)).astype(dtype), rng.standard_normal((B, 3)).astype(dtype)


def train(model, opt, x, y, steps=20, check_every_step=False):
    lossf = nn.MSELoss()
    for i in range(steps):
        loss = lossf(model(nnx.tensor(x)), nnx.tensor(y))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if check_every_step:  # the replicas hold the same bits after every step
            mine = hashlib.sha256(b"".join(np.ascontiguousarray(p.data).tobytes()
                                           for p in model.parameters())).hexdigest()
            every = dist.all_gather_objects(mine)
            if len(set(every)) != 1:
                fail(f"the ranks' parameters differ after step {i + 1}")


def host_params(model):
    return [np.array(p.data, copy=True) for p in model.parameters()]


def equivalence(dtype, opt_name, tol):
    nnx.set_default_dtype(dtype)
    try:
        x, y = data(dtype)
        make_opt = (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9)) if opt_name == "sgd" \
            else (lambda ps: optim.Adam(ps, lr=0.01))
        ref = make_model(0)
        train(ref, make_opt(ref.parameters()), x, y)
        # rank 1 starts from other weights: the wrapper must copy rank 0's
        model = make_model(0 if R == 0 else 7)
        ddp = nn.parallel.DistributedDataParallel(model)
        half = len(x) // W
        train(ddp, make_opt(ddp.parameters()), x[R * half:(R + 1) * half],
              y[R * half:(R + 1) * half], check_every_step=True)
        mine = host_params(model)
        err = max(float(np.abs(a - b).max()) for a, b in zip(mine, host_params(ref)))
        if not err <= tol:
            fail(f"{dtype} {opt_name}: 2 ranks differ from one process by {err:.3g} > {tol}")
        every = dist.all_gather_objects([a.tobytes() for a in mine])
        if every[0] != every[1]:
            fail(f"{dtype} {opt_name}: the ranks' parameters are not bit-identical")
        say(f"CHECK equivalence-{dtype}-{opt_name} OK max_err={err:.3g} bit_identical=1")
    finally:
        nnx.set_default_dtype("float32")


for dt, tol in (("float64", 1e-10), ("float32", 1e-5)):
    for name in ("sgd", "adam"):
        equivalence(dt, name, tol)

# gradients without an optimizer (packed per dtype), a parameter unused on one rank only
nnx.set_default_dtype("float64")
x, y = data("float64")
ref = make_model(0)
nn.MSELoss()(ref(nnx.tensor(x)), nnx.tensor(y)).backward()
model = make_model(0)
ddp = nn.parallel.DistributedDataParallel(model)
half = len(x) // W
nn.MSELoss()(ddp(nnx.tensor(x[R * half:(R + 1) * half])),
             nnx.tensor(y[R * half:(R + 1) * half])).backward()
err = max(float(np.abs(np.asarray(p.grad.data) - np.asarray(q.grad.data)).max())
          for p, q in zip(model.parameters(), ref.parameters()))
if not err <= 1e-12:
    fail(f"packed gradients differ from the whole batch's by {err:.3g}")
say(f"CHECK packed-gradients OK max_err={err:.3g}")


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, use_b):
        return self.b(x) if use_b else self.a(x)


nnx.manual_seed(1)
two = nn.parallel.DistributedDataParallel(TwoHeads(), find_unused_parameters=True)
opt = optim.SGD(two.parameters(), lr=0.1)
xs = nnx.tensor(np.ones((4, 3)))
opt.zero_grad()
two(xs, use_b=(R == 1)).sum().backward()  # rank 0 uses a, rank 1 uses b
ga, gb = two.module.a.weight.grad, two.module.b.weight.grad
if ga is None or gb is None or not np.allclose(ga.data, 2.0) or not np.allclose(gb.data, 2.0):
    fail(f"find_unused_parameters: expected averaged gradients 2.0, got {ga} / {gb}")
opt.zero_grad()
two(xs, use_b=False).sum().backward()  # nobody uses b: its grad stays None
if two.module.b.weight.grad is not None:
    fail("find_unused_parameters: a parameter unused on every rank got a gradient")
say("CHECK unused-parameters OK")
nnx.set_default_dtype("float32")

# differing shapes: every rank raises the same error naming the first differing parameter
nnx.manual_seed(0)
bad = nn.container.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3 if R == 0 else 2))
try:
    nn.parallel.DistributedDataParallel(bad)
except nnx.ShapeError as e:
    msg = str(e)
else:
    fail("differing parameter shapes were not detected")
msgs = dist.all_gather_objects(msg)
want = ("DistributedDataParallel: parameter '2.weight' has shape (2, 5) on rank 1 but (3, 5) on "
        "rank 0")
if msgs != [want, want]:
    fail(f"shape-check messages: {msgs}")
say(f"CHECK shape-mismatch OK message={msgs[0]!r}")

# DistributedSampler with the world's defaults: disjoint, covering, reshuffled alike
n = 103
sampler = DistributedSampler(range(n), shuffle=True, seed=5)
shards = []
for epoch in range(3):
    sampler.set_epoch(epoch)
    shards.append(list(sampler))
every = dist.all_gather_objects(shards)
for epoch in range(3):
    a, b = every[0][epoch], every[1][epoch]
    if len(a) != len(b) or sorted(set(a) | set(b)) != list(range(n)) or len(set(a) & set(b)) > 1:
        fail(f"sampler epoch {epoch}: shards not disjoint/covering")
if every[0][0] == every[0][1]:
    fail("set_epoch did not reshuffle")
loader = DataLoader((np.arange(n, dtype=np.float32),), batch_size=10, sampler=sampler)
rows = np.concatenate([b[0].data for b in loader])
if rows.tolist() != [float(i) for i in every[R][2]]:
    fail("DataLoader(sampler=) does not follow the sampler")
say("CHECK sampler OK")

# collectives on Tensors and arrays, sum and mean, broadcast
t = nnx.tensor(np.full(3, R + 1.0))
dist.all_reduce(t)
a = np.full((2, 2), float(R))
dist.all_reduce(a, op="mean")
c = np.full(4, R, dtype=np.int64)
dist.broadcast(c, src=1)
if not (np.allclose(t.data, 3.0) and np.allclose(a, 0.5) and (c == 1).all()):
    fail(f"collectives: {t.data} {a} {c}")
dist.barrier()
say("CHECK collectives OK")
