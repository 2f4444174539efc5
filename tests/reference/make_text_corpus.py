"""Writes tests/fixtures/text/tokenizer_corpus.json: a committed set of prompts with the ids the
Hugging Face tokenizers give them, the reference flashlora's tokenizers must equal.

  clip      slow CLIPTokenizer (no ftfy installed: the text cleaning path), 77 tokens, truncated
  t5        slow T5Tokenizer (sentencepiece; what the BFL reference runs), 512 tokens
  t5_256    the same at 256 tokens (schnell), only where it differs from a cut of t5
  clip_fast, t5_fast   the fast tokenizers' ids where they differ from the slow ones (documented
            differences: CJK spacing and cleaning for CLIP, trailing/around-special spaces for T5)

Ids are stored without padding (the attention mask's length); the C test pads them.

  build-venv/bin/python tests/reference/make_text_corpus.py SOURCES_DIR
SOURCES_DIR: the download directory of scripts/make_text_vocab.py --keep-sources.
"""

import json
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import text_vocab_sources as S  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "text", "tokenizer_corpus.json")

PLAIN = [
    "a photo of a cat", "a photo of sks dog", "A mug with the sks logo, studio lighting",
    "a red apple on a wooden table", "portrait of an old man, dramatic lighting, 85mm", "the quick brown fox jumps over the lazy dog",
    "cinematic still of a robot walking in the rain", "a watercolor painting of a lighthouse at dusk",
    "product shot of a perfume bottle on marble", "an astronaut riding a horse on mars",
    "logo of a coffee shop called Bean There", "isometric 3d render of a tiny house", "a cozy cabin in the snowy mountains",
    "macro photograph of a dew drop on a leaf", "a bowl of ramen, steam rising, top view",
    "oil painting of a ship in a storm", "a minimalist poster with bold typography", "pixel art of a knight",
    "children's book illustration of a friendly dragon", "a neon sign that says OPEN",
    "aerial view of a city at night", "a golden retriever puppy playing in the grass", "studio portrait, soft light, bokeh",
    "a vintage car parked in front of a diner", "sushi platter on a black slate", "an ancient temple covered in vines",
    "sketch of a cat sitting on a windowsill", "a futuristic city with flying cars", "photo of a sneaker, white background",
    "a t-shirt mockup with the brand mascot", "low poly fox", "Van Gogh style starry night over a modern city",
    "a mascot character waving, flat vector art", "close-up of a wristwatch", "a stack of pancakes with syrup",
    "the Eiffel Tower in spring", "UPPERCASE PROMPT WITH SHOUTING", "MiXeD CaSe PrOmPt", "sks", "ohwx man in a suit",
]
PUNCT = [
    "Hello, world!", "Hello  World!!  ", "wait... what?!", "a (very) [detailed] {render}", "cats & dogs", "100% cotton",
    "e-mail: someone@example.com", "https://example.com/path?q=1&x=2", "#hashtag @mention", "C++ and C# code",
    "one; two: three -- four", "\"quoted\" text", "'single quoted'", "a/b\\c|d", "~tilde^caret`backtick",
    "price: $19.99 (USD)", "1+1=2", "***stars***", "a_b_c", "<html><body>hi</body></html>", "-- dashes -- and — em — dashes",
    "…ellipsis…", "«guillemets»", "¿Qué? ¡Sí!",
]
NUMBERS = [
    "it's 2024", "1234567890", "3.14159", "1,000,000 people", "4k 8k 16k", "1920x1080", "007", "v2.1.0",
    "0.5 0.25 0.125", "2nd 3rd 4th", "under 18", "Room 101", "-42", "1e10", "٣٤٥ arabic digits", "१२३ devanagari digits",
]
WIDE = [
    "Ｆｕｌｌ－ｗｉｄｔｈ ① ﬁ café", "ＡＢＣ ａｂｃ １２３", "ｶﾀｶﾅ half-width katakana", "① ② ③ ⑩ ⑳", "ﬁ ﬂ ﬀ ﬃ", "㎏ ㎞ ㎡ ℃ ℉",
    "™ © ®", "½ ¼ ¾", "Ⅻ ⅻ Ⅳ", "＂ｆｕｌｌ＂ ＇ｗｉｄｔｈ＇", "ｈｅｌｌｏ　ｗｏｒｌｄ", "𝐛𝐨𝐥𝐝 𝑖𝑡𝑎𝑙𝑖𝑐", "ℌℑℜ", "x² y³ H₂O",
    "ｓｋｓ ｌｏｇｏ", "㍻ ㈱", "ǅ ǈ ǋ", "ﬅ ﬆ", "Ⓐ Ⓑ ⓐ", "　ideographic space　",
]
EMOJI = [
    "😀", "😀😀 a", "a cat 🐱 with a hat 🎩", "👍🏽 thumbs up", "👨‍👩‍👧‍👦 family", "🇫🇷 flag", "❤️ love", "🔥🔥🔥",
    "emoji at end 🚀", "🎉party🎉", "☕ coffee", "✨ sparkles ✨", "🙂🙃", "⭐️⭐️⭐️⭐️⭐️ review", "😂 lol",
]
ACCENTS = [
    "café", "cafe\u0301", "naïve résumé", "Ångström", "Crème brûlée", "São Paulo", "Zürich", "Dvořák", "Łódź",
    "Tiếng Việt có dấu", "ΟΔΟΣ ΣΊΣΥΦΟΣ", "Σ", "ΑΣ ΣΑ", "İstanbul", "straße STRASSE", "ǅungla", "Ĳsselmeer",
    "A\u030a vs \u00c5", "o\u0308 u\u0308 a\u0308", "n\u0303 N\u0303", "e\u0301\u0302", "Å", "ﬀoo",
]
WHITESPACE = [
    "", " ", "   ", "\t\n", "  two   spaces ", "trailing space ", " leading space", "multiple     inner     spaces",
    "tabs\tand\nnewlines\r\nhere", "a\u00a0non-breaking\u00a0space", "line\u2028separator", "para\u2029sep",
    "ends with tabs\t\t", "a  b  c  ", "   surrounded   ", "x\u3000y", "a \u2003 em space",
]
SCRIPTS = [
    "日本語のテキスト", "中文提示词：一只猫", "한국어 프롬프트", "Привет, мир", "Ελληνικά γράμματα", "مرحبا بالعالم",
    "שלום עולם", "ภาษาไทย", "हिन्दी पाठ", "ქართული", "Հայերեն", "Tiếng Việt", "日本 and English mixed 中文",
    "漢字かなカナ", "ㄱㄴㄷ ᄀᄂ",
]
SPECIAL = [
    "<|endoftext|>", "a <|endoftext|> b", "!<|endoftext|>x", "<|ENDOFTEXT|>", "<|startoftext|>hello", "a</s>b", "a </s>",
    "x <pad> y", "<unk>", "a<extra_id_0>b", "a <extra_id_0> b", "<extra_id_99> end", "<extra_id_100>", "< / s >",
    "<|endoftext|><|endoftext|>",
]
CONTROL = [
    "a\x07b", "a\u200bb zero width", "a\x7fb", "\ufeffbom at start", "private \ue000 use", "soft\u00adhyphen",
    "rtl \u202emark", "a\x0bb\x0cc", "x\x1cy\x1fz", "combining alone \u0301",
]
CONTRACTIONS = [
    "it's", "IT'S", "we'll they've I'm you'd", "'s", "''s", "don't", "rock'n'roll", "'ll'll", "can't won't",
    "O'Brien's", "it’s curly", "''",
]
MIXED = [
    "```code block```", "**bold** _italic_", "a, b, c, d, e", "# Heading", "- list item", "foo.bar(baz)",
    "snake_case and camelCase", "key=value; other=1", "[trigger] in a forest", "sks_logo.png", "v1/v2/v3",
    "100x zoom", "1girl, solo, looking at viewer", "masterpiece, best quality, (ultra detailed:1.2)",
]


def long_prompts():
    rng = random.Random(12)
    words = [w for p in PLAIN for w in p.split()]
    out = [" ".join(rng.choice(words) for _ in range(1000)), "a" * 3000, "1" * 700, "word " * 600,
           " ".join(rng.choice(words + ["😀", "日本", "Ｆｕｌｌ", "café"]) for _ in range(400))]
    return out


def random_prompts(n):
    rng = random.Random(7)
    parts = ([w for p in PLAIN + PUNCT + WIDE + EMOJI + ACCENTS + SCRIPTS + CONTRACTIONS for w in p.split()] +
             [" ", "  ", "\t", "!", ",", "'s", "123", "ß", "ﬁ", "😀", "①", "<extra_id_3>", "</s>"])
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        out.append("".join(rng.choice(parts) + rng.choice(["", " ", " ", "  "]) for _ in range(k)))
    return out


def ids(tok, text, max_length):
    enc = tok(text, max_length=max_length, truncation=True, padding="max_length")
    return enc.input_ids[:sum(enc.attention_mask)]


def main():
    src = sys.argv[1]
    clip_dir = S.write_clip_files(src, os.path.join(src, "clip"))
    spiece = S.write_spiece(src, os.path.join(src, "spiece.model"))
    cs, cf = S.clip_slow(clip_dir), S.clip_fast(clip_dir)
    ts, tf = S.t5_slow(spiece), S.t5_fast(src)
    groups = [("plain", PLAIN), ("punctuation", PUNCT), ("numbers", NUMBERS), ("fullwidth", WIDE), ("emoji", EMOJI),
              ("accents", ACCENTS), ("whitespace", WHITESPACE), ("scripts", SCRIPTS), ("special", SPECIAL),
              ("control", CONTROL), ("contractions", CONTRACTIONS), ("mixed", MIXED), ("long", long_prompts()),
              ("random", random_prompts(60))]
    entries, diffs = [], {"clip": 0, "t5": 0}
    for group, prompts in groups:
        for p in prompts:
            e = {"group": group, "prompt": p, "clip": ids(cs, p, 77), "t5": ids(ts, p, 512)}
            t5_256 = ids(ts, p, 256)
            if t5_256 != e["t5"][:255] + [1] and t5_256 != e["t5"]:
                e["t5_256"] = t5_256
            elif len(e["t5"]) > 256:
                e["t5_256"] = t5_256
            fast_clip, fast_t5 = ids(cf, p, 77), ids(tf, p, 512)
            if fast_clip != e["clip"]:
                e["clip_fast"] = fast_clip
                diffs["clip"] += 1
            if fast_t5 != e["t5"]:
                e["t5_fast"] = fast_t5
                diffs["t5"] += 1
            entries.append(e)
    import transformers, tokenizers, sentencepiece, regex  # noqa: E401
    doc = {"about": "ids of the Hugging Face tokenizers for each prompt (see tests/reference/make_text_corpus.py)",
           "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                        "sentencepiece": sentencepiece.__version__, "regex": regex.__version__,
                        "python": sys.version.split()[0]},
           "prompts": entries}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write("{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items() if k != "prompts"))
        f.write(', "prompts": [\n' + ",\n".join(json.dumps(e, ensure_ascii=False) for e in entries) + "\n]}\n")
    print(f"{OUT}: {len(entries)} prompts; fast differs from slow on {diffs['clip']} (CLIP), {diffs['t5']} (T5)")


if __name__ == "__main__":
    main()
