"""Independent reference for arbor's GGUF reader: a numpy Llama forward pass over the weights
that the `gguf` package dequantizes, and a `tokenizers` tokenizer built from the file's
vocabulary in Python.

    python3 gguf_reference.py logits MODEL.gguf ID,ID,...      -> JSON {"logits": [[...], ...]}
    python3 gguf_reference.py greedy MODEL.gguf ID,ID,... N    -> JSON {"ids": [...]}
    python3 gguf_reference.py encode MODEL.gguf < strings.json -> JSON {"ids": [[...], ...]}
    python3 gguf_reference.py hf-logits DIR ID,ID,...          -> JSON {"logits": [[...], ...]}

`hf-logits` runs the same forward pass over a Hugging Face model directory (`config.json` and
an f32 `model.safetensors`, read here with numpy alone), e.g. an arbor training checkpoint.
"""
import json
import sys

import gguf
import numpy as np


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def weights(reader):
    """name -> float32 array in PyTorch layout, q/k rows in the Hugging Face order."""
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if len(t.shape) > 1 else w.reshape(-1)
        if t.name.endswith("attn_q.weight") or t.name.endswith("attn_k.weight"):
            n = heads if "attn_q" in t.name else kv_heads
            rows, cols = w.shape
            # llama.cpp stored w.reshape(n, 2, hd/2, cols).swapaxes(1, 2); undo it.
            w = w.reshape(n, rows // n // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)
        out[t.name] = w
    return out


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x, theta):
    # x: [T, H, D]; Hugging Face rotate_half convention.
    t, _, d = x.shape
    inv = 1.0 / theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    ang = np.outer(np.arange(t), inv)
    cos = np.concatenate([np.cos(ang), np.cos(ang)], -1)[:, None, :].astype(np.float32)
    sin = np.concatenate([np.sin(ang), np.sin(ang)], -1)[:, None, :].astype(np.float32)
    rot = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], -1)
    return x * cos + rot * sin


def gguf_hparams(reader):
    return dict(
        n_layers=int(field(reader, "llama.block_count")),
        heads=int(field(reader, "llama.attention.head_count")),
        kv_heads=int(field(reader, "llama.attention.head_count_kv")),
        eps=float(field(reader, "llama.attention.layer_norm_rms_epsilon")),
        theta=float(field(reader, "llama.rope.freq_base")),
    )


HF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
HF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_model(path):
    """(hyper-parameters, name -> float32 array under the GGUF names) of a model directory."""
    import os
    import struct

    cfg = json.load(open(os.path.join(path, "config.json")))
    raw = open(os.path.join(path, "model.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    w = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", name
        a, b = t["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype="<f4").reshape(t["shape"])
        if name in HF_NAMES:
            w[HF_NAMES[name]] = arr
        else:
            _, _, i, rest = name.split(".", 3)
            w[f"blk.{i}.{HF_LAYER_NAMES[rest]}"] = arr
    hp = dict(
        n_layers=cfg["num_hidden_layers"],
        heads=cfg["num_attention_heads"],
        kv_heads=cfg.get("num_key_value_heads", cfg["num_attention_heads"]),
        eps=cfg["rms_norm_eps"],
        theta=cfg.get("rope_theta", 10000.0),
    )
    return hp, w


def forward(hp, w, ids):
    n_layers, heads, kv_heads = hp["n_layers"], hp["heads"], hp["kv_heads"]
    eps, theta = hp["eps"], hp["theta"]
    emb = w["token_embd.weight"]
    x = emb[ids]
    t, dm = x.shape
    hd = dm // heads
    mask = np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    for i in range(n_layers):
        p = f"blk.{i}."
        h = rms(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(t, heads, hd)
        k = (h @ w[p + "attn_k.weight"].T).reshape(t, kv_heads, hd)
        v = (h @ w[p + "attn_v.weight"].T).reshape(t, kv_heads, hd)
        q, k = rope(q, theta), rope(k, theta)
        rep = heads // kv_heads
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", s, v).reshape(t, dm)
        x = x + a @ w[p + "attn_output.weight"].T
        h = rms(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + ((g / (1.0 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
    x = rms(x, w["output_norm.weight"], eps)
    head = w.get("output.weight", emb)
    return x @ head.T


def tokenizer(reader):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges")]
    types = list(field(reader, "tokenizer.ggml.token_type"))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    pre = str(field(reader, "tokenizer.ggml.pre"))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    )
    return tok


def main():
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "hf-logits":
        hp, w = hf_model(path)
        ids = [int(i) for i in sys.argv[3].split(",")]
        print(json.dumps({"logits": forward(hp, w, ids).tolist()}))
        return
    reader = gguf.GGUFReader(path)
    if mode == "encode":
        strings = json.load(sys.stdin)
        tok = tokenizer(reader)
        print(json.dumps({"ids": [tok.encode(s, add_special_tokens=False).ids for s in strings]}))
        return
    ids = [int(i) for i in sys.argv[3].split(",")]
    w = weights(reader)
    if mode == "logits":
        print(json.dumps({"logits": forward(gguf_hparams(reader), w, ids).tolist()}))
    elif mode == "greedy":
        for _ in range(int(sys.argv[4])):
            ids.append(int(forward(gguf_hparams(reader), w, ids)[-1].argmax()))
        print(json.dumps({"ids": ids}))


if __name__ == "__main__":
    main()
