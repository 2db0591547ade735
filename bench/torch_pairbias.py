"""The pair-bias transformer of docs/DESIGN.md section 4, written in plain PyTorch.

This is the outside reference for the C++ model: the end-to-end fixture
(tests/fixtures/make_pairbias_fixture.py) and the CPU training benchmark
(bench/bench_train_cpu.py) are built on it. It runs on torch 1.13 (explicit softmax
attention) and on torch 2.x (F.scaled_dot_product_attention with the bias as a float mask).

Shapes, stated once:
  tokens (B,N) int     coords (B,N,3) float32     labels (B,N) int
  x (B,N,d_model)      z (B,N,N,c_z)              bias (B,H,N,N): b[b,h,i,j], i query, j key
  heads: (B,N,d_model) is reshaped to (B,N,H,d_model/H) (heads are the leading part of the
  last dim), then attended per (b,h), then reshaped back.

Parameter names are those of the C++ checkpoint (docs/DESIGN.md section 4), weights stored [out, in].
Checkpoint layout (HDF5): datasets /model/<name>, the model config keys as attributes of /model.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# docs/DESIGN.md section 4 keys and their defaults. d_ff=None means 4*d_model.
DEFAULT_CONFIG = {
    "n_types": 8,
    "d_model": 64,
    "n_heads": 4,
    "n_layers": 2,
    "d_ff": None,
    "c_z": 16,
    "relpos_clip": 32,
    "dist_bins": 64,
    "dist_max": 16.0,
}
INT_KEYS = ("n_types", "d_model", "n_heads", "n_layers", "d_ff", "c_z", "relpos_clip", "dist_bins")
FLOAT_KEYS = ("dist_max",)
LN_EPS = 1e-5


def resolve_config(cfg=None):
    """Returns the full model config: defaults filled in, types checked, d_ff resolved."""
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"model config: unknown key(s) {unknown}; expected a subset of "
                         f"{sorted(DEFAULT_CONFIG)}")
    out = dict(DEFAULT_CONFIG)
    out.update(cfg)
    if out["d_ff"] is None:
        out["d_ff"] = 4 * out["d_model"]
    for k in INT_KEYS:
        v = out[k]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"model config: key '{k}' expected an int, found {v!r}")
        out[k] = int(v)
        if out[k] < (0 if k == "relpos_clip" else 1):
            raise ValueError(f"model config: key '{k}' expected >= "
                             f"{0 if k == 'relpos_clip' else 1}, found {v}")
    v = out["dist_max"]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or v <= 0:
        raise ValueError(f"model config: key 'dist_max' expected a positive number, found {v!r}")
    out["dist_max"] = float(v)
    if out["d_model"] % out["n_heads"] != 0:
        raise ValueError(f"model config: d_model ({out['d_model']}) must be a multiple of "
                         f"n_heads ({out['n_heads']})")
    return out


# ---------------------------------------------------------------------------------------------
# Pair features
# ---------------------------------------------------------------------------------------------

def relpos_index(n, clip, device=None):
    """(N,N) int64: idx[i,j] = clamp(j - i, -clip, clip) + clip  (i query row, j key column)."""
    pos = torch.arange(n, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-clip, clip) + clip


def pair_distances(coords):
    """coords (B,N,3) float32 -> d (B,N,N) float64, d[b,i,j] = ||x_i - x_j|| computed in float64."""
    if coords.dim() != 3 or coords.shape[-1] != 3:
        raise ValueError(f"coords: expected shape (B,N,3), found {tuple(coords.shape)}")
    x = coords.to(torch.float64)
    diff = x[:, :, None, :] - x[:, None, :, :]
    return torch.sqrt((diff * diff).sum(-1))


def distance_bins(coords, dist_max, dist_bins):
    """coords (B,N,3) -> (B,N,N) int64: clamp(floor(d / dist_max * dist_bins), 0, dist_bins-1).

    The expression is evaluated in float64 in exactly this order: (d / dist_max) * dist_bins.
    """
    d = pair_distances(coords)
    b = torch.floor(d / float(dist_max) * float(dist_bins))
    return b.clamp(0, dist_bins - 1).to(torch.int64)


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

class PairEmbed(nn.Module):
    """z (B,N,N,c_z) = Rel[relpos_index] + Dist[distance_bins]."""

    def __init__(self, cfg, dtype=None):
        super().__init__()
        self.clip = cfg["relpos_clip"]
        self.dist_max = cfg["dist_max"]
        self.dist_bins = cfg["dist_bins"]
        self.rel = nn.Embedding(2 * cfg["relpos_clip"] + 1, cfg["c_z"], dtype=dtype)  # [2R+1, c_z]
        self.dist = nn.Embedding(cfg["dist_bins"], cfg["c_z"], dtype=dtype)           # [bins, c_z]

    def forward(self, coords):  # coords:(B,N,3) -> z:(B,N,N,c_z)
        n = coords.shape[1]
        rel = self.rel(relpos_index(n, self.clip, coords.device))               # (N,N,c_z)
        dist = self.dist(distance_bins(coords, self.dist_max, self.dist_bins))  # (B,N,N,c_z)
        return rel[None] + dist


class Attention(nn.Module):
    def __init__(self, d_model, n_heads, dtype=None):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d_model, d_model, dtype=dtype)
        self.k = nn.Linear(d_model, d_model, dtype=dtype)
        self.v = nn.Linear(d_model, d_model, dtype=dtype)
        self.o = nn.Linear(d_model, d_model, dtype=dtype)

    def forward(self, x, bias, use_sdpa=True):  # x:(B,N,d_model) bias:(B,H,N,N) -> (B,N,d_model)
        B, N, C = x.shape
        H = self.n_heads
        D = C // H
        # (B,N,C) -> (B,N,H,D) -> (B,H,N,D)
        q = self.q(x).reshape(B, N, H, D).transpose(1, 2)
        k = self.k(x).reshape(B, N, H, D).transpose(1, 2)
        v = self.v(x).reshape(B, N, H, D).transpose(1, 2)
        scale = 1.0 / math.sqrt(D)
        if use_sdpa and hasattr(F, "scaled_dot_product_attention"):
            # default scale of scaled_dot_product_attention is 1/sqrt(D), the one we want
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        else:
            s = torch.matmul(q, k.transpose(-2, -1)) * scale + bias  # (B,H,N,N)
            y = torch.matmul(torch.softmax(s, dim=-1), v)            # (B,H,N,D)
        return self.o(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, d_model, d_ff, dtype=None):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff, dtype=dtype)  # [d_ff, d_model]
        self.fc2 = nn.Linear(d_ff, d_model, dtype=dtype)  # [d_model, d_ff]

    def forward(self, x):  # x:(B,N,d_model)
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU


class Layer(nn.Module):
    def __init__(self, cfg, dtype=None):
        super().__init__()
        d, H, cz = cfg["d_model"], cfg["n_heads"], cfg["c_z"]
        self.pair_norm = nn.LayerNorm(cz, eps=LN_EPS, dtype=dtype)
        self.pair_proj = nn.Linear(cz, H, bias=False, dtype=dtype)  # [H, c_z]
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS, dtype=dtype)
        self.attn = Attention(d, H, dtype=dtype)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS, dtype=dtype)
        self.mlp = MLP(d, cfg["d_ff"], dtype=dtype)

    def forward(self, x, z, use_sdpa=True):  # x:(B,N,d_model) z:(B,N,N,c_z)
        b = self.pair_proj(self.pair_norm(z)).permute(0, 3, 1, 2)  # (B,N,N,H) -> (B,H,N,N)
        x = x + self.attn(self.norm1(x), b, use_sdpa)
        x = x + self.mlp(self.norm2(x))
        return x


class PairBiasModel(nn.Module):
    """PairBiasModel(cfg): cfg a dict of docs/DESIGN.md section 4 keys (missing keys take defaults)."""

    def __init__(self, cfg=None, dtype=None, use_sdpa=True):
        super().__init__()
        self.cfg = resolve_config(cfg)
        self.use_sdpa = use_sdpa
        c = self.cfg
        self.embed = nn.Embedding(c["n_types"], c["d_model"], dtype=dtype)  # [K, d_model]
        self.pair = PairEmbed(c, dtype=dtype)
        self.layers = nn.ModuleList([Layer(c, dtype=dtype) for _ in range(c["n_layers"])])
        self.final_norm = nn.LayerNorm(c["d_model"], eps=LN_EPS, dtype=dtype)
        self.head = nn.Linear(c["d_model"], c["n_types"], dtype=dtype)  # [K, d_model]

    def forward(self, tokens, coords):  # tokens:(B,N) coords:(B,N,3) -> logits:(B,N,K)
        if tokens.dim() != 2 or coords.shape[:2] != tokens.shape:
            raise ValueError(f"tokens (B,N) and coords (B,N,3) disagree: tokens "
                             f"{tuple(tokens.shape)}, coords {tuple(coords.shape)}")
        x = self.embed(tokens.long())
        z = self.pair(coords)
        for layer in self.layers:
            x = layer(x, z, self.use_sdpa)
        return self.head(self.final_norm(x))

    def loss(self, tokens, coords, labels):
        """Mean cross-entropy over all B*N residues."""
        logits = self(tokens, coords)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())


# ---------------------------------------------------------------------------------------------
# Optimiser (the reference recipe)
# ---------------------------------------------------------------------------------------------

_DECAYED_SUFFIXES = tuple(f"attn.{p}.weight" for p in "qkvo") + (
    "mlp.fc1.weight", "mlp.fc2.weight", "pair_proj.weight")


def is_decayed(name):
    """Weight decay on Linear weight matrices only (attn q/k/v/o, mlp fc1/fc2, pair_proj, head);
    none on embeddings (embed, pair.rel, pair.dist), norms and biases."""
    return name == "head.weight" or name.endswith(_DECAYED_SUFFIXES)


def make_adamw(model, lr, weight_decay):
    decay = [p for n, p in model.named_parameters() if is_decayed(n)]
    no_decay = [p for n, p in model.named_parameters() if not is_decayed(n)]
    return torch.optim.AdamW([
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def lr_at(step, lr, min_lr, warmup, steps):
    """The lr used for the update of step s = 0,1,2,...: linear warmup then cosine to min_lr."""
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))


def train_step(model, opt, tokens, coords, labels, step, sched, grad_clip):
    """One step: loss, backward, clip over all params, lr of the step, AdamW update.
    sched: dict with lr, min_lr, warmup, steps. Returns (loss, pre-clip grad norm)."""
    opt.zero_grad(set_to_none=True)
    loss = model.loss(tokens, coords, labels)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    lr = lr_at(step, sched["lr"], sched["min_lr"], sched["warmup"], sched["steps"])
    for g in opt.param_groups:
        g["lr"] = lr
    opt.step()
    return loss.detach(), norm.detach()


# ---------------------------------------------------------------------------------------------
# HDF5 checkpoint I/O: /model/<name> datasets ([out, in] weights), model keys as /model attrs
# ---------------------------------------------------------------------------------------------

def save_hdf5(model, path_or_group, dtype=np.float32):
    """Writes the parameters (and the model keys as attributes) into /model of an HDF5 file
    (path) or under an open h5py file/group. Deterministic bytes: no timestamps."""
    import h5py

    def write(root):
        g = root.require_group("model")
        for k in INT_KEYS:
            g.attrs.create(k, np.int64(model.cfg[k]))
        for k in FLOAT_KEYS:
            g.attrs.create(k, np.float64(model.cfg[k]))
        for name, t in model.state_dict().items():
            g.create_dataset(name, data=t.detach().cpu().numpy().astype(dtype), track_times=False)

    if isinstance(path_or_group, (str, bytes)) or hasattr(path_or_group, "__fspath__"):
        with h5py.File(path_or_group, "w", track_order=False) as f:
            write(f)
    else:
        write(path_or_group)


def read_hdf5_config(group):
    """Model keys from the attributes of an open /model group."""
    cfg = {}
    for k in INT_KEYS + FLOAT_KEYS:
        if k not in group.attrs:
            raise KeyError(f"{group.file.filename}:/model: missing attribute '{k}'")
        v = group.attrs[k]
        cfg[k] = int(v) if k in INT_KEYS else float(v)
    return cfg


def read_hdf5_state(group, model, prefix=""):
    """Tensors for every parameter of model from datasets <group>/<prefix><name>, checked for
    presence and shape, cast to the model's dtype. Returns a state dict."""
    sd = {}
    for name, t in model.state_dict().items():
        key = prefix + name
        if key not in group:
            raise KeyError(f"{group.file.filename}:{group.name}: missing dataset '{key}'")
        a = group[key][()]
        if tuple(a.shape) != tuple(t.shape):
            raise ValueError(f"{group.file.filename}:{group.name}/{key}: expected shape "
                             f"{tuple(t.shape)}, found {tuple(a.shape)}")
        sd[name] = torch.as_tensor(a).to(t.dtype)
    return sd


def load_hdf5(path, dtype=torch.float32, use_sdpa=True):
    """Builds a PairBiasModel from a checkpoint file: config from /model attrs, parameters from
    /model/<name>. Datasets in /model that the model does not know are an error."""
    import h5py
    with h5py.File(path, "r") as f:
        if "model" not in f:
            raise KeyError(f"{path}: expected a group /model, found {list(f.keys())}")
        g = f["model"]
        model = PairBiasModel(read_hdf5_config(g), dtype=dtype, use_sdpa=use_sdpa)
        names = set(model.state_dict())
        extra = sorted(k for k in g.keys() if k not in names)
        if extra:
            raise KeyError(f"{path}:/model: unexpected dataset(s) {extra}")
        model.load_state_dict(read_hdf5_state(g, model))
    return model


# ---------------------------------------------------------------------------------------------
# Chain data (docs/DESIGN.md section 3), numpy; for benchmarks and fixtures
# ---------------------------------------------------------------------------------------------

def nearest_nonlocal_labels(tokens, coords):
    """tokens (S,N) int, coords (S,N,3) -> labels (S,N) int32: label_i = t_j with
    j = argmin_{|i-j|>2} ||x_i - x_j|| (distances in float64; ties -> the smaller j)."""
    S, N = tokens.shape
    if N < 4:
        raise ValueError(f"chain labels: expected n_res >= 4 (a residue needs a neighbour with "
                         f"|i-j| > 2), found n_res = {N}")
    x = coords.astype(np.float64)
    diff = x[:, :, None, :] - x[:, None, :, :]
    d = np.sqrt((diff * diff).sum(-1))                      # (S,N,N)
    i = np.arange(N)
    local = np.abs(i[:, None] - i[None, :]) <= 2
    d = np.where(local[None], np.inf, d)
    j = np.argmin(d, axis=-1)                               # first minimum -> the smaller j
    return np.take_along_axis(tokens, j, axis=1).astype(np.int32)


def generate_chains(n_samples, n_res, n_types, seed, bond=3.8):
    """Freely jointed chains: x0 = 0, x_{i+1} = x_i + bond * u_i (u_i uniform on the sphere),
    types uniform in {0..K-1}. Returns tokens int32 (S,N), coords float32 (S,N,3), labels int32."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, n_types, size=(n_samples, n_res)).astype(np.int32)
    u = rng.standard_normal((n_samples, n_res - 1, 3))
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    steps = np.concatenate([np.zeros((n_samples, 1, 3)), bond * u], axis=1)
    coords = np.cumsum(steps, axis=1).astype(np.float32)
    labels = nearest_nonlocal_labels(tokens, coords)
    return tokens, coords, labels
