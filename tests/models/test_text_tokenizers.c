/*
 * test_text_tokenizers.c — the CLIP and T5 tokenizers against the Hugging Face ones.
 *
 * The committed corpus (tests/fixtures/text/tokenizer_corpus.json, written by
 * tests/reference/make_text_corpus.py: plain prompts, punctuation, numbers, full-width and
 * compatibility characters, emoji, accents composed and decomposed, whitespace runs, other
 * scripts, literal special tokens, control characters, contractions, prompts long enough to be
 * truncated, random mixtures) must give exactly the slow tokenizers' ids with the built-in
 * vocabularies: CLIP at 77 tokens, T5 at 512 and 256. Also: the notes' goldens, the built-in
 * tables' hashes, the vocabularies users have (vocab.json + merges.txt, spiece.model,
 * tokenizer.json) on the tiny pipeline's files, and bad input — files that are not JSON or not a
 * SentencePiece model, a character map whose trie points outside itself, a 1 MB prompt, invalid
 * UTF-8 — each one clear error, no crash.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/config.h"
#include "harness.h"
#include "models/text/text_encoders.h"
#include "models/text/tokenizers.h"

static fl_clip_tokenizer *clip;
static fl_t5_tokenizer *t5;

static bool ids_equal(const int32_t *got, const json_t *want, int max_length, int32_t pad, int32_t *expected) {
    size_t n = json_array_size(want);
    for (int i = 0; i < max_length; i++) expected[i] = i < (int)n ? (int32_t)json_integer_value(json_array_get(want, (size_t)i)) : pad;
    return !memcmp(got, expected, (size_t)max_length * sizeof *got);
}

static void show(const char *what, const char *prompt, const int32_t *got, const int32_t *want, int n) {
    char p[120];
    snprintf(p, sizeof p, "%s", prompt);
    fprintf(stderr, "  %s mismatch on \"%s\"\n    got ", what, p);
    for (int i = 0; i < n && i < 24; i++) fprintf(stderr, "%d ", (int)got[i]);
    fprintf(stderr, "\n    want ");
    for (int i = 0; i < n && i < 24; i++) fprintf(stderr, "%d ", (int)want[i]);
    fprintf(stderr, "\n");
}

static void test_corpus(void) {
    char path[512];
    fl_error err = {0};
    json_t *root = fl_config_load_file(fl_test_data_path("fixtures/text/tokenizer_corpus.json", path, sizeof path), &err);
    FL_EXPECTF(root != NULL, "%s", err.message);
    if (!root) return;
    json_t *prompts = json_object_get(root, "prompts");
    size_t n = json_array_size(prompts), clip_ok = 0, t5_ok = 0, t5_256_ok = 0, shown = 0;
    int32_t got[512], want[512];
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(prompts, i);
        const char *prompt = json_string_value(json_object_get(e, "prompt"));
        size_t len = json_string_length(json_object_get(e, "prompt"));
        int c = fl_clip_tokenize(clip, prompt, len, got, 77, 49407, &err);
        if (c > 0 && ids_equal(got, json_object_get(e, "clip"), 77, 49407, want)) clip_ok++;
        else if (shown++ < 8) show("CLIP", prompt, got, want, 77);
        c = fl_t5_tokenize(t5, prompt, len, got, 512, &err);
        if (c > 0 && ids_equal(got, json_object_get(e, "t5"), 512, 0, want)) t5_ok++;
        else if (shown++ < 8) show("T5", prompt, got, want, 512);
        json_t *w256 = json_object_get(e, "t5_256");
        c = fl_t5_tokenize(t5, prompt, len, got, 256, &err);
        if (!w256) { /* a prefix of the 512 ids, with </s> last */
            json_t *w = json_object_get(e, "t5");
            FL_EXPECT(json_array_size(w) <= 256);
            w256 = w;
        }
        if (c > 0 && ids_equal(got, w256, 256, 0, want)) t5_256_ok++;
        else if (shown++ < 8) show("T5/256", prompt, got, want, 256);
    }
    printf("corpus: %zu prompts; CLIP %zu, T5 %zu, T5/256 %zu equal\n", n, clip_ok, t5_ok, t5_256_ok);
    FL_EXPECT(n >= 200);
    FL_EXPECTF(clip_ok == n && t5_ok == n && t5_256_ok == n, "not every prompt matches");
    json_decref(root);
}

static void expect_ids(const char *what, const int32_t *got, const int32_t *want, int n) {
    bool ok = !memcmp(got, want, (size_t)n * sizeof *got);
    if (!ok) show(what, "", got, want, n);
    FL_EXPECTF(ok, "%s ids differ", what);
}

static void test_notes_goldens(void) {
    int32_t ids[77], t[512];
    fl_error err;
    const int32_t cat[7] = {49406, 320, 1125, 539, 320, 2368, 49407};
    FL_EXPECT(fl_clip_tokenize(clip, "a photo of a cat", 16, ids, 77, 49407, &err) == 7);
    expect_ids("CLIP a photo of a cat", ids, cat, 7);
    FL_EXPECT(ids[7] == 49407 && ids[76] == 49407);
    const int32_t its[8] = {49406, 585, 568, 273, 271, 273, 275, 49407};
    FL_EXPECT(fl_clip_tokenize(clip, "it's 2024", 9, ids, 77, 49407, &err) == 8);
    expect_ids("CLIP it's 2024", ids, its, 8);
    const int32_t sks[10] = {3, 9, 1202, 13, 3, 7, 157, 7, 1782, 1};
    FL_EXPECT(fl_t5_tokenize(t5, "a photo of sks dog", 18, t, 512, &err) == 10);
    expect_ids("T5 a photo of sks dog", t, sks, 10);
    FL_EXPECT(t[10] == 0 && t[511] == 0);
    const int32_t wide[8] = {4043, 18, 12018, 189, 209, 361, 11949, 1};
    const char *w = "Ｆｕｌｌ－ｗｉｄｔｈ ① ﬁ café";
    FL_EXPECT(fl_t5_tokenize(t5, w, strlen(w), t, 512, &err) == 8);
    expect_ids("T5 full-width", t, wide, 8);
    /* slow sentencepiece drops the trailing space (the fast tokenizer keeps a final 3) */
    const int32_t spaces[3] = {192, 4856, 1};
    FL_EXPECT(fl_t5_tokenize(t5, "  two   spaces ", 15, t, 512, &err) == 3);
    expect_ids("T5 two spaces", t, spaces, 3);
    FL_EXPECT(fl_t5_tokenize(t5, "", 0, t, 256, &err) == 1 && t[0] == 1 && t[1] == 0);
    FL_EXPECT(fl_clip_tokenize(clip, "", 0, ids, 77, 49407, &err) == 2 && ids[0] == 49406 && ids[1] == 49407);
}

static void test_builtin_tables(void) {
    FL_EXPECT(fl_clip_tokenizer_vocab_size(clip) == 49408);
    FL_EXPECT(fl_clip_tokenizer_bos(clip) == 49406 && fl_clip_tokenizer_eos(clip) == 49407);
    FL_EXPECT(fl_t5_tokenizer_vocab_size(t5) == 32100);
    FL_EXPECT(fl_clip_tokenizer_is_builtin_vocab(clip) && fl_t5_tokenizer_is_builtin_vocab(t5));
    /* the canonical tables (recorded in the tokenizers, which compare users' files against them) */
    FL_EXPECTF(!strcmp(fl_clip_tokenizer_hash(clip), "8ab0d5b851777760ecaf50b3dc9787eda01976c3eefa9d71bd29a385ad8c3823"),
               "CLIP tables hash %s", fl_clip_tokenizer_hash(clip));
    FL_EXPECTF(!strcmp(fl_t5_tokenizer_hash(t5), "9634d29a6b2848aca3589d6e979589300bf45a6e66346ce33080b5e54c7a80cc"),
               "T5 tables hash %s", fl_t5_tokenizer_hash(t5));
}

static void test_bad_prompts(void) {
    int32_t ids[512];
    fl_error err = {0};
    size_t big = (size_t)1 << 20;
    char *mb = malloc(big + 1);
    memset(mb, 'a', big);
    mb[big] = 0;
    FL_EXPECT(fl_clip_tokenize(clip, mb, big, ids, 77, 49407, &err) == -1 && err.code == FL_ELIMIT);
    FL_EXPECTF(strstr(err.message, "1048576 bytes"), "got '%s'", err.message);
    FL_EXPECT(fl_t5_tokenize(t5, mb, big, ids, 512, &err) == -1 && err.code == FL_ELIMIT);
    /* the longest prompt accepted, one word with no space, is fine and quick */
    FL_EXPECT(fl_clip_tokenize(clip, mb, FL_TEXT_MAX_PROMPT_BYTES, ids, 77, 49407, &err) == 77);
    FL_EXPECT(fl_t5_tokenize(t5, mb, FL_TEXT_MAX_PROMPT_BYTES, ids, 512, &err) == 512);
    free(mb);
    const char bad[] = "caf\xc3 au lait \xff";
    FL_EXPECT(fl_clip_tokenize(clip, bad, sizeof bad - 1, ids, 77, 49407, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "not valid UTF-8 (byte 3)"), "got '%s'", err.message);
    FL_EXPECT(fl_t5_tokenize(t5, bad, sizeof bad - 1, ids, 512, &err) == -1 && err.code == FL_EINVAL);
    const char surrogate[] = "\xed\xa0\x80";
    FL_EXPECT(fl_t5_tokenize(t5, surrogate, 3, ids, 512, &err) == -1);
}

static void test_bad_files(void) {
    fl_error err = {0};
    fl_t5_tokenizer *t = NULL;
    const char not_json[] = "this is not json {";
    FL_EXPECT(fl_t5_tokenizer_from_json(not_json, sizeof not_json - 1, "tokenizer_2/tokenizer.json", &t, &err) == -1);
    FL_EXPECTF(strstr(err.message, "tokenizer_2/tokenizer.json: not JSON"), "got '%s'", err.message);
    const char no_model[] = "{\"model\": {\"type\": \"BPE\"}}";
    FL_EXPECT(fl_t5_tokenizer_from_json(no_model, sizeof no_model - 1, "t.json", &t, &err) == -1);
    FL_EXPECTF(strstr(err.message, "no Unigram model"), "got '%s'", err.message);
    const char bad_piece[] = "{\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0], [3, 1]]}}";
    FL_EXPECT(fl_t5_tokenizer_from_json(bad_piece, sizeof bad_piece - 1, "t.json", &t, &err) == -1);
    FL_EXPECTF(strstr(err.message, "model.vocab[1] is not [piece, score]"), "got '%s'", err.message);
    const char bad_map[] = "{\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"AAAAQA==\"},"
                           "\"model\": {\"type\": \"Unigram\", \"unk_id\": 0, \"vocab\": [[\"<unk>\", 0], [\"a\", -1]]}}";
    FL_EXPECT(fl_t5_tokenizer_from_json(bad_map, sizeof bad_map - 1, "t.json", &t, &err) == -1);
    FL_EXPECTF(strstr(err.message, "character map"), "got '%s'", err.message);
    const unsigned char junk[] = {0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01};
    FL_EXPECT(fl_t5_tokenizer_from_spiece(junk, sizeof junk, "spiece.model", &t, &err) == -1);
    FL_EXPECTF(strstr(err.message, "spiece.model: not a SentencePiece model"), "got '%s'", err.message);
    fl_clip_tokenizer *c = NULL;
    const char merges[] = "#version: 0.2\na b\n";
    FL_EXPECT(fl_clip_tokenizer_from_memory(not_json, sizeof not_json - 1, merges, sizeof merges - 1, "tokenizer", &c,
                                            &err) == -1);
    FL_EXPECTF(strstr(err.message, "tokenizer: vocab.json is not JSON"), "got '%s'", err.message);
    const char vocab[] = "{\"a\": 0, \"b\": 1, \"<|startoftext|>\": 2, \"<|endoftext|>\": 3}";
    const char bad_merges[] = "#version: 0.2\na b c\n";
    FL_EXPECT(fl_clip_tokenizer_from_memory(vocab, sizeof vocab - 1, bad_merges, sizeof bad_merges - 1, "tokenizer", &c,
                                            &err) == -1);
    FL_EXPECTF(strstr(err.message, "line 2 is not a merge of two symbols"), "got '%s'", err.message);
    FL_EXPECT(fl_clip_tokenizer_load("/nonexistent/tokenizer", &c, &err) == -1 && err.code == FL_ENOTFOUND);
}

/* A character map whose trie walks outside its units: bounded, falls back to identity. */
static void test_hostile_charsmap(void) {
    /* trie of 4 units claiming offsets far away; strings area "x\0" */
    unsigned char map[4 + 16 + 2] = {16, 0, 0, 0};
    for (int i = 0; i < 4; i++) {
        uint32_t unit = 0xFFFFFC00u | (1u << 8) | 'a';
        memcpy(map + 4 + 4 * i, &unit, 4);
    }
    map[20] = 'x';
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char enc[64] = {0};
    size_t o = 0;
    for (size_t i = 0; i < sizeof map; i += 3) {
        uint32_t v = (uint32_t)map[i] << 16 | (i + 1 < sizeof map ? (uint32_t)map[i + 1] << 8 : 0) |
                     (i + 2 < sizeof map ? map[i + 2] : 0);
        enc[o++] = b64[v >> 18 & 63];
        enc[o++] = b64[v >> 12 & 63];
        enc[o++] = i + 1 < sizeof map ? b64[v >> 6 & 63] : '=';
        enc[o++] = i + 2 < sizeof map ? b64[v & 63] : '=';
    }
    char json[512];
    snprintf(json, sizeof json,
             "{\"normalizer\": {\"type\": \"Precompiled\", \"precompiled_charsmap\": \"%s\"}, \"model\": {\"type\": "
             "\"Unigram\", \"unk_id\": 2, \"vocab\": [[\"<pad>\", 0], [\"</s>\", 0], [\"<unk>\", 0], [\"\\u2581\", -1], "
             "[\"a\", -2]]}, \"added_tokens\": [{\"id\": 0, \"content\": \"<pad>\"}, {\"id\": 1, \"content\": \"</s>\"}]}",
             enc);
    fl_error err = {0};
    fl_t5_tokenizer *t = NULL;
    FL_EXPECTF(fl_t5_tokenizer_from_json(json, strlen(json), "t.json", &t, &err) == 0, "%s", err.message);
    if (!t) return;
    int32_t ids[8];
    FL_EXPECT(fl_t5_tokenize(t, "aaa a", 5, ids, 8, &err) > 0);
    fl_t5_tokenizer_free(t);
}

int main(void) {
    fl_error err;
    if (fl_clip_tokenizer_builtin(&clip, &err) != 0 || fl_t5_tokenizer_builtin(&t5, &err) != 0) {
        fprintf(stderr, "built-in tokenizers: %s\n", err.message);
        return 1;
    }
    FL_RUN(test_corpus);
    FL_RUN(test_notes_goldens);
    FL_RUN(test_builtin_tables);
    FL_RUN(test_bad_prompts);
    FL_RUN(test_bad_files);
    FL_RUN(test_hostile_charsmap);
    fl_clip_tokenizer_free(clip);
    fl_t5_tokenizer_free(t5);
    return fl_test_finish();
}
