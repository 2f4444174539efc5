"""Builds the Hugging Face tokenizers that serve as references for flashlora's CLIP and T5
tokenizers, from the original vocabulary files (written by scripts/make_text_vocab.py
--keep-sources into its download directory):

  clip_slow(dir), clip_fast(dir)   CLIPTokenizer / a tokenizers.Tokenizer built as transformers'
                                   converter builds CLIP's, from vocab.json + merges.txt derived
                                   from OpenAI's merges (the 49,408-token vocabulary)
  t5_slow(dir), t5_fast(dir)       T5Tokenizer over an spiece.model rebuilt from tokenizer.json
                                   (pieces, scores, nmt_nfkc charsmap) / T5TokenizerFast over it

Needs transformers (4.47.x with Debian's torch 1.13), tokenizers, sentencepiece, protobuf.
"""

import base64
import json
import os

VOCAB_FILES = ("bpe_simple_vocab_16e6.txt", "t5_tokenizer.json")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_files(src_dir, out_dir):
    """vocab.json + merges.txt as the FLUX tokenizer/ folder holds them."""
    lines = open(os.path.join(src_dir, VOCAB_FILES[0]), encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return out_dir


def clip_slow(clip_dir):
    from transformers import CLIPTokenizer
    return CLIPTokenizer(os.path.join(clip_dir, "vocab.json"), os.path.join(clip_dir, "merges.txt"),
                         pad_token="<|endoftext|>")


def clip_fast(clip_dir):
    from transformers import CLIPTokenizerFast
    return CLIPTokenizerFast(os.path.join(clip_dir, "vocab.json"), os.path.join(clip_dir, "merges.txt"),
                             pad_token="<|endoftext|>", from_slow=True)


def write_spiece(src_dir, out_path):
    """An spiece.model equivalent to T5's: the tokenizer.json pieces (without the 100 extra ids,
    which the Hugging Face tokenizer adds itself), scores, types and the precompiled charsmap."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    doc = json.load(open(os.path.join(src_dir, VOCAB_FILES[1]), encoding="utf-8"))
    m = pb.ModelProto()
    m.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    m.trainer_spec.vocab_size = 32000
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 2, -1, 1, 0
    norm = [n for n in doc["normalizer"]["normalizers"] if n["type"] == "Precompiled"][0]
    m.normalizer_spec.name = "nmt_nfkc"
    m.normalizer_spec.precompiled_charsmap = base64.b64decode(norm["precompiled_charsmap"])
    m.normalizer_spec.add_dummy_prefix = True
    m.normalizer_spec.remove_extra_whitespaces = True
    m.normalizer_spec.escape_whitespaces = True
    for i, (piece, score) in enumerate(doc["model"]["vocab"][:32000]):
        p = m.pieces.add()
        p.piece, p.score = piece, score
        p.type = pb.ModelProto.SentencePiece.CONTROL if i < 2 else (
            pb.ModelProto.SentencePiece.UNKNOWN if i == 2 else pb.ModelProto.SentencePiece.NORMAL)
    with open(out_path, "wb") as f:
        f.write(m.SerializeToString())
    return out_path


def t5_slow(spiece_path):
    from transformers import T5Tokenizer
    return T5Tokenizer(spiece_path, extra_ids=100, legacy=True)


def t5_fast(src_dir):
    from transformers import T5TokenizerFast
    return T5TokenizerFast(tokenizer_file=os.path.join(src_dir, VOCAB_FILES[1]), extra_ids=100)
