/*
 * text_encoders.c — the one-call text side of FLUX.1 (see text_encoders.h): loads the two
 * tokenizers and encoders, checks that every id a tokenizer can produce has a row in its
 * encoder's embedding, and encodes a prompt: CLIP over 77 tokens for y, T5 over L tokens for txt.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/sha256.h"
#include "kernels/ops.h"
#include "models/text/t5_encoder.h"
#include "models/text/text_encoders.h"
#include "models/text/text_internal.h"
#include "models/text/tokenizers.h"

struct fl_text_encoders {
    fl_ctx *ctx;
    fl_clip_tokenizer *clip_tok;
    fl_t5_tokenizer *t5_tok;
    fl_clip_text *clip;
    fl_t5_encoder *t5;
    int length;
    int clip_length;
    char fingerprint[65];
};

void fl_text_encoders_free(fl_text_encoders *te) {
    if (!te) return;
    fl_clip_tokenizer_free(te->clip_tok);
    fl_t5_tokenizer_free(te->t5_tok);
    fl_clip_text_free(te->clip);
    fl_t5_encoder_free(te->t5);
    free(te);
}

int fl_text_encoders_load(fl_ctx *ctx, const fl_text_encoders_files *files, fl_text_encoders **out, fl_error *err) {
    *out = NULL;
    if (!files->clip || !files->t5) return fl_fail(err, FL_EINVAL, "text encoders: the %s weights are not given",
                                                   files->clip ? "T5" : "CLIP");
    int length = files->t5_max_length ? files->t5_max_length : FL_T5_LENGTH_DEV;
    if (length < 1 || length > 4096) return fl_fail(err, FL_EINVAL, "text encoders: T5 length %d is out of range", length);
    fl_text_encoders *te = fl_xcalloc(1, sizeof *te);
    te->ctx = ctx;
    te->length = length;
    int rc = files->clip_tokenizer ? fl_clip_tokenizer_load(files->clip_tokenizer, &te->clip_tok, err)
                                   : fl_clip_tokenizer_builtin(&te->clip_tok, err);
    if (rc == 0)
        rc = files->t5_tokenizer ? fl_t5_tokenizer_load(files->t5_tokenizer, &te->t5_tok, err)
                                 : fl_t5_tokenizer_builtin(&te->t5_tok, err);
    fl_weight_files *cw = NULL, *tw = NULL;
    char clip_fp[65] = "", t5_fp[65] = "";
    if (rc == 0 && (rc = fl_weight_files_open(files->clip, &cw, err)) == 0) {
        rc = fl_clip_text_load(ctx, cw, NULL, &te->clip, err);
        fl_weight_files_fingerprint(cw, clip_fp);
    }
    if (rc == 0 && (rc = fl_weight_files_open(files->t5, &tw, err)) == 0) {
        rc = fl_t5_encoder_load(ctx, tw, NULL, &te->t5, err);
        fl_weight_files_fingerprint(tw, t5_fp);
    }
    fl_weight_files_close(cw);
    fl_weight_files_close(tw);
    if (rc == 0) {
        const fl_clip_params *cp = fl_clip_text_params(te->clip);
        const fl_t5_params *tp = fl_t5_encoder_params(te->t5);
        te->clip_length = cp->max_positions < FL_CLIP_MAX_LENGTH ? cp->max_positions : FL_CLIP_MAX_LENGTH;
        if (fl_clip_tokenizer_vocab_size(te->clip_tok) > cp->vocab_size)
            rc = fl_fail(err, FL_EINVAL, "the CLIP tokenizer has %d ids, the encoder's token embedding %d rows",
                         (int)fl_clip_tokenizer_vocab_size(te->clip_tok), cp->vocab_size);
        else if (fl_t5_tokenizer_vocab_size(te->t5_tok) > tp->vocab_size)
            rc = fl_fail(err, FL_EINVAL, "the T5 tokenizer has %d ids, the encoder's embedding %d rows",
                         (int)fl_t5_tokenizer_vocab_size(te->t5_tok), tp->vocab_size);
    }
    if (rc != 0) {
        fl_text_encoders_free(te);
        return -1;
    }
    char text[512];
    int k = snprintf(text, sizeof text, "clip %s %s t5 %s %s L %d", fl_clip_tokenizer_hash(te->clip_tok), clip_fp,
                     fl_t5_tokenizer_hash(te->t5_tok), t5_fp, length);
    fl_sha256_hex(text, (size_t)k, te->fingerprint);
    *out = te;
    return 0;
}

static bool is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int fl_text_encoders_load_dir(fl_ctx *ctx, const char *dir, int t5_max_length, fl_text_encoders **out,
                              fl_error *err) {
    char clip[4096], t5[4096], ct[4096], tt[4096];
    snprintf(clip, sizeof clip, "%s/text_encoder", dir);
    snprintf(t5, sizeof t5, "%s/text_encoder_2", dir);
    snprintf(ct, sizeof ct, "%s/tokenizer", dir);
    snprintf(tt, sizeof tt, "%s/tokenizer_2", dir);
    if (!is_dir(clip) || !is_dir(t5))
        return fl_fail(err, FL_ENOTFOUND, "%s: no %s folder", dir, is_dir(clip) ? "text_encoder_2" : "text_encoder");
    fl_text_encoders_files f = {clip, t5, is_dir(ct) ? ct : NULL, is_dir(tt) ? tt : NULL, t5_max_length};
    return fl_text_encoders_load(ctx, &f, out, err);
}

int fl_text_encoders_context_dim(const fl_text_encoders *te) { return fl_t5_encoder_params(te->t5)->d_model; }
int fl_text_encoders_vec_dim(const fl_text_encoders *te) { return fl_clip_text_params(te->clip)->hidden_size; }
int fl_text_encoders_length(const fl_text_encoders *te) { return te->length; }
const char *fl_text_encoders_fingerprint(const fl_text_encoders *te) { return te->fingerprint; }

int fl_text_encoders_encode(fl_text_encoders *te, const char *prompt, fl_tensor *txt, fl_tensor *y, fl_error *err) {
    FL_CHECK(prompt && txt && y);
    size_t len = strnlen(prompt, FL_TEXT_MAX_PROMPT_BYTES + 1);
    if (fl_text_check_prompt(prompt, len, err) != 0) return -1;
    int32_t *cids = fl_xmalloc((size_t)te->clip_length * sizeof *cids);
    int32_t *tids = fl_xmalloc((size_t)te->length * sizeof *tids);
    int rc = fl_clip_tokenize(te->clip_tok, prompt, len, cids, te->clip_length, fl_clip_tokenizer_eos(te->clip_tok), err);
    if (rc > 0) rc = fl_t5_tokenize(te->t5_tok, prompt, len, tids, te->length, err);
    if (rc > 0) {
        int64_t want_txt[2] = {te->length, fl_text_encoders_context_dim(te)};
        FL_CHECKF(txt->ndim == 2 && txt->shape[0] == want_txt[0] && txt->shape[1] == want_txt[1] &&
                      fl_tensor_is_contiguous(txt) && txt->dtype == fl_ctx_storage_dtype(te->ctx),
                  "txt must be a contiguous [%lld, %lld] tensor of the storage dtype", (long long)want_txt[0],
                  (long long)want_txt[1]);
        FL_CHECKF(fl_tensor_numel(y) == fl_text_encoders_vec_dim(te) && fl_tensor_is_contiguous(y) &&
                      y->dtype == fl_ctx_storage_dtype(te->ctx),
                  "y must be a contiguous tensor of %d elements of the storage dtype", fl_text_encoders_vec_dim(te));
        fl_clip_text_forward(te->clip, cids, te->clip_length, NULL, y);
        fl_t5_encoder_forward(te->t5, tids, te->length, txt);
        rc = 0;
    }
    free(cids);
    free(tids);
    return rc < 0 ? -1 : 0;
}

int fl_text_encoders_encode_host(fl_text_encoders *te, const char *prompt, float *txt, float *y, fl_error *err) {
    int64_t ts[2] = {te->length, fl_text_encoders_context_dim(te)}, ys[1] = {fl_text_encoders_vec_dim(te)};
    fl_tensor dt = fl_ctx_tensor(te->ctx, fl_ctx_storage_dtype(te->ctx), 2, ts);
    fl_tensor dy = fl_ctx_tensor(te->ctx, fl_ctx_storage_dtype(te->ctx), 1, ys);
    int rc = fl_text_encoders_encode(te, prompt, &dt, &dy, err);
    if (rc == 0) {
        fl_ctx_download_f32(te->ctx, txt, &dt, (size_t)(ts[0] * ts[1]));
        fl_ctx_download_f32(te->ctx, y, &dy, (size_t)ys[0]);
    }
    fl_ctx_tensor_free(te->ctx, &dt);
    fl_ctx_tensor_free(te->ctx, &dy);
    return rc;
}
