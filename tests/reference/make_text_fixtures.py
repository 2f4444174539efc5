"""Writes the text encoders' golden fixtures (tests/fixtures/text/) from the Hugging Face models
run in float64 on weights rounded to float32 (so the C side, in fp32, differs only by its own
rounding):

  clip_tiny.safetensors   a tiny CLIPTextModel in the real key layout (text_model.*), quick_gelu,
                          legacy eos_token_id (argmax pooling), with inputs ids_a/ids_b (77 ids,
                          EOS = the largest id, pads = EOS) and last_hidden_state_* / pooler_output_*
  t5_tiny.safetensors     a tiny T5EncoderModel (shared.weight, encoder.block.N...), gated-gelu, with
                          inputs of 512 ids (every relative-position bucket) and 7 ids and
                          last_hidden_state_*; buckets: the reference's bucket of every relative
                          position -511 .. 511
  tiny-flux/              a FLUX.1-style folder: text_encoder/ and text_encoder_2/ (config.json +
                          model.safetensors), tokenizer/ (a small vocab.json + merges.txt: the 512
                          byte symbols and OpenAI's first 300 merges), tokenizer_2/spiece.model (a
                          small unigram model, identity normalizer), and expected.safetensors: per
                          prompt the tokenizers' ids and the pipeline's txt (T5 at 64 tokens) and y

  build-venv/bin/python tests/reference/make_text_fixtures.py SOURCES_DIR
SOURCES_DIR: the download directory of scripts/make_text_vocab.py --keep-sources.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import st_io  # noqa: E402
import text_vocab_sources as S  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "text")
PROMPTS = ["a photo of sks dog", "", "Hello  World!! it's 2024, CAFÉ ünïcode 😀 <extra_id_1> end"]
T5_LENGTH = 64


def round_f32(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.float().double())
    return model


def weights(model, skip=()):
    return {k: v.float() for k, v in model.state_dict().items() if v.is_floating_point() and k not in skip}


def tiny_clip(vocab, seed, hidden=32, heads=2, mlp=48, layers=2):
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=2, bos_token_id=0, pad_token_id=1)
    model = CLIPTextModel(cfg).double().eval()
    with torch.no_grad():  # larger than the default init so every part matters
        for name, p in model.named_parameters():
            if "layer_norm" in name or "final_layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return round_f32(model), cfg


def tiny_t5(vocab, seed, d_model=32, d_kv=8, heads=4, d_ff=48, layers=3):
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, num_heads=heads, d_ff=d_ff, num_layers=layers,
                   feed_forward_proj="gated-gelu", relative_attention_num_buckets=32,
                   relative_attention_max_distance=128, layer_norm_epsilon=1e-6)
    model = T5EncoderModel(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif "relative_attention_bias" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) / p.shape[-1] ** 0.5)
    return round_f32(model), cfg


def clip_golden():
    model, _ = tiny_clip(128, 1)
    g = torch.Generator().manual_seed(2)
    out = weights(model)
    for case, n in (("a", 9), ("b", 30)):
        ids = torch.randint(1, 127, (1, 77), generator=g)
        ids[0, n] = 127
        ids[0, n + 1:] = 127  # pads repeat EOS: pooling takes the first
        with torch.no_grad():
            r = model(input_ids=ids)
        out[f"ids_{case}"] = ids[0].float()
        out[f"last_hidden_state_{case}"] = r.last_hidden_state[0].float()
        out[f"pooler_output_{case}"] = r.pooler_output[0].float()
    st_io.save(os.path.join(OUT, "clip_tiny.safetensors"), out, {"about": "tiny CLIPTextModel golden"})


def t5_golden():
    from transformers.models.t5.modeling_t5 import T5Attention
    model, _ = tiny_t5(128, 3)
    g = torch.Generator().manual_seed(4)
    out = weights(model, skip=("encoder.embed_tokens.weight",))
    for case, n in (("long", 512), ("short", 7)):
        ids = torch.randint(0, 128, (1, n), generator=g)
        with torch.no_grad():
            r = model(input_ids=ids)
        out[f"ids_{case}"] = ids[0].float()
        out[f"last_hidden_state_{case}"] = r.last_hidden_state[0].float()
    rel = torch.arange(-511, 512)
    out["buckets"] = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=32,
                                                           max_distance=128).float()
    st_io.save(os.path.join(OUT, "t5_tiny.safetensors"), out, {"about": "tiny T5EncoderModel golden"})


def tiny_tokenizers(src, root):
    """A small CLIP vocabulary (bytes + 300 merges) and a small unigram model."""
    lines = open(os.path.join(src, S.VOCAB_FILES[0]), encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:301]]
    byte_chars = list(S.bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + ["<|startoftext|>",
                                                                                             "<|endoftext|>"]
    tok = os.path.join(root, "tokenizer")
    os.makedirs(tok, exist_ok=True)
    json.dump({v: i for i, v in enumerate(vocab)}, open(os.path.join(tok, "vocab.json"), "w", encoding="utf-8"),
              ensure_ascii=False)
    open(os.path.join(tok, "merges.txt"), "w", encoding="utf-8").write(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    from sentencepiece import sentencepiece_model_pb2 as pb
    doc = json.load(open(os.path.join(src, S.VOCAB_FILES[1]), encoding="utf-8"))
    keep = [(p, s) for p, s in doc["model"]["vocab"][3:32000]
            if len(p) == 1 or p in ("▁a", "▁photo", "▁of", "▁dog", "▁the", "▁Hello", "▁World", "▁it", "▁end", "s", "'")]
    keep = keep[:200]
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 2, -1, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = True
    m.normalizer_spec.escape_whitespaces = True
    for i, (piece, score) in enumerate([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + keep):
        p = m.pieces.add()
        p.piece, p.score = piece, score
        p.type = pb.ModelProto.SentencePiece.CONTROL if i < 2 else (
            pb.ModelProto.SentencePiece.UNKNOWN if i == 2 else pb.ModelProto.SentencePiece.NORMAL)
    tok2 = os.path.join(root, "tokenizer_2")
    os.makedirs(tok2, exist_ok=True)
    path = os.path.join(tok2, "spiece.model")
    open(path, "wb").write(m.SerializeToString())
    return tok, path, len(vocab), len(m.pieces) + 100


def tiny_pipeline(src):
    from transformers import CLIPTokenizer, T5Tokenizer
    root = os.path.join(OUT, "tiny-flux")
    tok_dir, spiece, clip_vocab, t5_vocab = tiny_tokenizers(src, root)
    clip_tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"),
                             pad_token="<|endoftext|>")
    t5_tok = T5Tokenizer(spiece, extra_ids=100, legacy=True)
    clip, clip_cfg = tiny_clip(clip_vocab, 5)
    t5, t5_cfg = tiny_t5((t5_vocab + 7) // 8 * 8, 6)
    for sub, model, cfg, skip in (("text_encoder", clip, clip_cfg, ()),
                                  ("text_encoder_2", t5, t5_cfg, ("encoder.embed_tokens.weight",))):
        d = os.path.join(root, sub)
        os.makedirs(d, exist_ok=True)
        st_io.save(os.path.join(d, "model.safetensors"), weights(model, skip), {"format": "pt"})
        open(os.path.join(d, "config.json"), "w").write(cfg.to_json_string())
    expected = {}
    for i, prompt in enumerate(PROMPTS):
        c = clip_tok(prompt, max_length=77, truncation=True, padding="max_length", return_tensors="pt").input_ids
        t = t5_tok(prompt, max_length=T5_LENGTH, truncation=True, padding="max_length", return_tensors="pt").input_ids
        with torch.no_grad():
            y = clip(input_ids=c).pooler_output[0]
            txt = t5(input_ids=t).last_hidden_state[0]
        expected.update({f"clip_ids_{i}": c[0].float(), f"t5_ids_{i}": t[0].float(), f"y_{i}": y.float(),
                         f"txt_{i}": txt.float()})
    st_io.save(os.path.join(root, "expected.safetensors"), expected,
               {"prompts": json.dumps(PROMPTS), "t5_length": str(T5_LENGTH)})


def main():
    torch.set_default_dtype(torch.float64)
    os.makedirs(OUT, exist_ok=True)
    clip_golden()
    t5_golden()
    tiny_pipeline(sys.argv[1])
    for dirpath, _, files in os.walk(OUT):
        for f in files:
            p = os.path.join(dirpath, f)
            print(f"{os.path.relpath(p, OUT)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
