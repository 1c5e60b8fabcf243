"""Run under ``mpiexec -n 2`` by tests/test_distributed.py: rank 1 fails mid-training in the
way ``sys.argv[1]`` names ("exit": os._exit(3); "kill": SIGKILL; "raise": an uncaught
exception; "hang": it stops answering, rank 0 runs with a collective timeout); rank 0 must not
finish, and the job must end."""
import os
import signal
import sys
import time

import numpy as np

import nnx
import nnx.distributed as dist
from nnx import nn, optim

mode = sys.argv[1]
dist.init(timeout=2.0 if mode == "hang" else None)
R = dist.rank()
nnx.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Linear(4, 2))
opt = optim.SGD(model.parameters(), lr=0.1)
x = nnx.tensor(np.ones((8, 4), np.float32))
for step in range(50):
    if R == 1 and step == 3:
        print(f"rank 1 fails at step 3 ({mode})", flush=True)
        if mode == "exit":
            os._exit(3)
        if mode == "kill":  # as the kernel's OOM killer would
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "raise":
            raise RuntimeError("rank 1 broke on purpose")
        if mode == "hang":
            time.sleep(120)
    loss = model(x).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
print(f"rank {R} finished all steps", flush=True)
