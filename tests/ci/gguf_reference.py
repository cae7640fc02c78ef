"""Independent reference for arbor's GGUF reader: a numpy Llama forward pass over the weights
that the `gguf` package dequantizes, and a `tokenizers` tokenizer built from the file's
vocabulary in Python.

    python3 gguf_reference.py logits MODEL.gguf ID,ID,...      -> JSON {"logits": [[...], ...]}
    python3 gguf_reference.py greedy MODEL.gguf ID,ID,... N    -> JSON {"ids": [...]}
    python3 gguf_reference.py encode MODEL.gguf < strings.json -> JSON {"ids": [[...], ...]}
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


def forward(reader, w, ids):
    n_layers = int(field(reader, "llama.block_count"))
    heads = int(field(reader, "llama.attention.head_count"))
    kv_heads = int(field(reader, "llama.attention.head_count_kv"))
    eps = float(field(reader, "llama.attention.layer_norm_rms_epsilon"))
    theta = float(field(reader, "llama.rope.freq_base"))
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
    reader = gguf.GGUFReader(path)
    if mode == "encode":
        strings = json.load(sys.stdin)
        tok = tokenizer(reader)
        print(json.dumps({"ids": [tok.encode(s, add_special_tokens=False).ids for s in strings]}))
        return
    ids = [int(i) for i in sys.argv[3].split(",")]
    w = weights(reader)
    if mode == "logits":
        print(json.dumps({"logits": forward(reader, w, ids).tolist()}))
    elif mode == "greedy":
        for _ in range(int(sys.argv[4])):
            ids.append(int(forward(reader, w, ids)[-1].argmax()))
        print(json.dumps({"ids": ids}))


if __name__ == "__main__":
    main()
