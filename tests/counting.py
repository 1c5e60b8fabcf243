"""Measures of the work a computation does, for tests that check work rather than classes:
the graph nodes a backward visits, and the activation passes a backend runs."""
import contextlib


def graph_nodes(t):
    """How many graph nodes a backward from ``t`` visits (a walk over ``grad_fn`` and each
    node's ``inputs``): the engine's work, whatever the nodes are."""
    seen, stack = set(), [t.grad_fn] if t.grad_fn is not None else []
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        stack.extend(i.grad_fn for i in fn.inputs if i.grad_fn is not None)
    return len(seen)


@contextlib.contextmanager
def kernel_passes(backend):
    """Count the activation passes ``backend`` runs inside the block, per (activation,
    direction): ``{("sigmoid", "forward"): 2, ("sigmoid", "backward"): 1, ...}``.

    Wraps the backend's kernel methods on this backend object only (the NumPy and the CuPy
    backend alike): the named forms (``sigmoid_bwd`` ...), the generic ``activation_forward``
    / ``activation_backward``, and ``bias_act_`` (a Linear's fused bias+activation forward). A
    kernel that calls another counts once, as the outer one."""
    counts = {}
    depth = [0]
    named = {"sigmoid_fwd": ("sigmoid", "forward"), "sigmoid_bwd": ("sigmoid", "backward"),
             "relu_fwd": ("relu", "forward"), "relu_bwd": ("relu", "backward"),
             "leaky_relu_fwd": ("leaky_relu", "forward"),
             "leaky_relu_bwd": ("leaky_relu", "backward")}

    def key_of(name, args, kwargs):
        if name in named:
            return named[name]
        if name == "activation_forward":
            return (args[0] if args else kwargs["name"], "forward")
        if name == "activation_backward":
            return (args[0] if args else kwargs["name"], "backward")
        act = args[2] if len(args) > 2 else kwargs.get("activation")  # bias_act_(y, b, act)
        return (act, "forward") if act not in (None, "linear") else None

    def wrap(name, real):
        def counted(*args, **kwargs):
            if depth[0] == 0:
                key = key_of(name, args, kwargs)
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    patched = []
    for name in list(named) + ["activation_forward", "activation_backward", "bias_act_"]:
        real = getattr(backend, name, None)
        if real is not None:
            patched.append(name)
            setattr(backend, name, wrap(name, real))
    try:
        yield counts
    finally:
        for name in patched:
            backend.__dict__.pop(name, None)
