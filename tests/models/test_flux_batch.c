/*
 * test_flux_batch.c — many tenants in one batch: per-sample adapters and the batch sampler.
 *
 * With several adapters attached (the fixture LoRA files and random ones with nonzero B, one of
 * them on every Linear, embedders and modulation included), a mixed batch of requests — different
 * prompts, seeds, guidance and adapter lists (none, one, two stacked, the same adapter at other
 * scales, a zero multiplier) — must give each request bitwise the image it gets alone. The same
 * holds for raw forwards of the guidance-distilled fixture (config a). Also checked: with every
 * sample using every attached set the per-sample forward matches the every-row forward (bitwise
 * for one sample, within float rounding for a batch); adapters really change the output;
 * fl_flux_remove_adapter; bad selections are errors, not aborts; and the per-step callback that
 * stops a run between steps. Classifier-free guidance (models trained with caption dropout take
 * guidance != 1 as its scale) keeps every property: batch images equal solo images, a request with
 * guidance 1 is untouched by CFG neighbours, one Euler step is the CFG combination of the prompt's
 * and the empty caption's steps, and models without caption dropout ignore the value.
 *
 * Residency: with the per-sample forward the activation plan does not depend on what is attached
 * or selected, so a batch over adapters already attached plans nothing (fl_flux_plan_count),
 * however many other sets (more than one sample may use) are attached or removed beside them,
 * and every image stays bitwise the same; only a rank larger than any before plans once more.
 *
 * The thread count comes from the first argument (meson runs the binary with 1 and with 2).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/lora.h"
#include "core/threads.h"
#include "harness.h"
#include "kernels/ops.h"
#include "models/flux.h"
#include "models/sampler.h"

enum { N_SETS = 4, N_REQS = 6, WIDTH = 8, HEIGHT = 12, STEPS = 3, TEXT_TOKENS = 7 };

static fl_ctx *cpu;

static fl_flux_model *load_model(const char *config) {
    char rel[128], path[512];
    snprintf(rel, sizeof rel, "fixtures/flux_%s.model.safetensors", config);
    fl_error err = {0};
    fl_flux_model *m = NULL;
    FL_EXPECTF(fl_flux_load(cpu, fl_test_data_path(rel, path, sizeof path), NULL, &m, &err) == 0, "load: %s",
               err.message);
    return m;
}

/* Attaches a fixture LoRA file; returns its set id or -1. */
static int attach_file(fl_flux_model *m, const char *config, const char *part, float multiplier) {
    char rel[128], path[512];
    snprintf(rel, sizeof rel, "fixtures/flux_%s.%s.safetensors", config, part);
    fl_error err = {0};
    fl_lora *lora = NULL;
    if (fl_lora_load_for_model(fl_test_data_path(rel, path, sizeof path), m, &lora, &err) != 0) {
        FL_EXPECTF(0, "lora %s: %s", part, err.message);
        return -1;
    }
    int id = fl_flux_add_adapter(m, lora->pairs, lora->n_pairs, multiplier, false, &err);
    FL_EXPECTF(id >= 0, "attach %s: %s", part, err.message);
    fl_lora_free(lora);
    return id;
}

/* Attaches a random adapter (A and B both nonzero) of the given rank: on every Linear of the
 * model (embedders and the final layer included) when spec is NULL, else on fl_flux_select_targets'
 * selection. Returns the set id or -1. */
static int attach_random(fl_flux_model *m, const char *spec, int rank, float alpha, uint64_t seed) {
    size_t n = fl_flux_linear_count(m);
    bool *selected = calloc(n, sizeof *selected);
    fl_error err = {0};
    if (spec) FL_EXPECTF(fl_flux_select_targets(m, spec, selected, &err) > 0, "targets: %s", err.message);
    else
        for (size_t i = 0; i < n; i++) selected[i] = true;
    fl_flux_lora_pair *pairs = calloc(n, sizeof *pairs);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (!selected[i]) continue;
        fl_flux_linear *lin = fl_flux_linear_at(m, i);
        pairs[k].module = lin->name;
        pairs[k].rank = rank;
        pairs[k].a = fl_test_randn((size_t)(rank * lin->in), seed + 2 * i, 1.0f / sqrtf((float)lin->in));
        pairs[k].b = fl_test_randn((size_t)(rank * lin->out), seed + 2 * i + 1, 0.5f / sqrtf((float)rank));
        pairs[k].alpha = alpha;
        k++;
    }
    int id = fl_flux_add_adapter(m, pairs, k, 1.0f, false, &err);
    FL_EXPECTF(id >= 0, "attach random: %s", err.message);
    for (size_t i = 0; i < k; i++) {
        free((float *)pairs[i].a);
        free((float *)pairs[i].b);
    }
    free(pairs);
    free(selected);
    return id;
}

/* Four sets on m: the two fixture files, a random adapter on every Linear, one on attention. */
static bool attach_sets(fl_flux_model *m, const char *config, int ids[N_SETS]) {
    ids[0] = attach_file(m, config, "lora", 1.0f);
    ids[1] = attach_file(m, config, "lora2", 0.8f);
    ids[2] = attach_random(m, NULL, 3, 3.0f, 1000);
    ids[3] = attach_random(m, "attention", 2, 4.0f, 2000);
    for (int i = 0; i < N_SETS; i++)
        if (ids[i] < 0) return false;
    return true;
}

static fl_flux_sample_adapters adapters_of(int n, const int *ids, const float *multipliers) {
    fl_flux_sample_adapters a;
    memset(&a, 0, sizeof a);
    a.n = n;
    for (int i = 0; i < n; i++) {
        a.set_ids[i] = ids[i];
        a.multipliers[i] = multipliers[i];
    }
    return a;
}

/* The mixed batch: none, one, two stacked, the same adapter at another scale (negative), a zero
 * multiplier next to a live one, and all four. Two requests share a prompt, two a seed. */
static void make_requests(const int ids[N_SETS], fl_sample_request reqs[N_REQS]) {
    static const char *const prompts[N_REQS] = {"a red fox in the snow", "a blue house at night",
                                                "portrait of an old sailor", "sks dog on the beach",
                                                "a red fox in the snow", "city skyline, watercolor"};
    static const uint64_t seeds[N_REQS] = {11, 22, 33, 44, 55, 22};
    static const float guidance[N_REQS] = {3.5f, 4.0f, 1.0f, 2.5f, 3.5f, 6.0f};
    memset(reqs, 0, N_REQS * sizeof *reqs);
    for (int r = 0; r < N_REQS; r++) {
        reqs[r].prompt = prompts[r];
        reqs[r].seed = seeds[r];
        reqs[r].guidance = guidance[r];
    }
    reqs[1].adapters = adapters_of(1, (int[]){ids[0]}, (float[]){1.0f});
    reqs[2].adapters = adapters_of(2, (int[]){ids[0], ids[2]}, (float[]){1.0f, 0.5f});
    reqs[3].adapters = adapters_of(2, (int[]){ids[2], ids[3]}, (float[]){1.5f, 1.0f});
    reqs[4].adapters = adapters_of(1, (int[]){ids[0]}, (float[]){-0.7f});
    reqs[5].adapters = adapters_of(4, (int[]){ids[3], ids[1], ids[2], ids[0]}, (float[]){0.0f, 1.2f, 0.3f, 2.0f});
}

static size_t image_floats(void) {
    return (size_t)WIDTH * HEIGHT * 3;
}

static bool sample_one(fl_flux_model *m, const fl_sample_request *req, float *image) {
    fl_error err = {0};
    int rc = fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, req, 1, &image, &err);
    FL_EXPECTF(rc == 0, "sample alone: %s", err.message);
    return rc == 0;
}

/* ---- the batch sampler ------------------------------------------------------------------------ */

static void test_batch_sampler_matches_alone(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    fl_sample_request reqs[N_REQS];
    make_requests(ids, reqs);
    size_t n = image_floats();
    float *batch[N_REQS], *alone = malloc(n * sizeof(float));
    for (int r = 0; r < N_REQS; r++) batch[r] = malloc(n * sizeof(float));
    fl_error err = {0};
    int rc = fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, batch, &err);
    FL_EXPECTF(rc == 0, "batch: %s", err.message);
    FL_EXPECT(fl_flux_sample_adapters_batch(m) == 0); /* the selection is put back */
    for (int r = 0; rc == 0 && r < N_REQS; r++) {
        if (!sample_one(m, &reqs[r], alone)) break;
        FL_EXPECTF(memcmp(alone, batch[r], n * sizeof(float)) == 0, "request %d: the batch image differs from "
                   "the image sampled alone", r);
    }
    /* A sub-batch in another order gives the same images again. */
    fl_sample_request sub[3] = {reqs[5], reqs[2], reqs[0]};
    float *sub_img[3] = {malloc(n * sizeof(float)), malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, sub, 3, sub_img, &err) == 0,
               "sub-batch: %s", err.message);
    FL_EXPECT(memcmp(sub_img[0], batch[5], n * sizeof(float)) == 0);
    FL_EXPECT(memcmp(sub_img[1], batch[2], n * sizeof(float)) == 0);
    FL_EXPECT(memcmp(sub_img[2], batch[0], n * sizeof(float)) == 0);
    /* The adapters matter: request 4 is request 0's prompt with an adapter (other seed aside). */
    fl_sample_request plain = reqs[1];
    plain.adapters.n = 0;
    if (sample_one(m, &plain, alone))
        FL_EXPECTF(memcmp(alone, batch[1], n * sizeof(float)) != 0, "adapter set %d changed nothing", ids[0]);
    fl_sample_request zero = reqs[1];
    zero.adapters.multipliers[0] = 0.0f;
    float *zero_img = malloc(n * sizeof(float));
    if (sample_one(m, &zero, zero_img)) FL_EXPECT(memcmp(alone, zero_img, n * sizeof(float)) == 0);
    for (int i = 0; i < 3; i++) free(sub_img[i]);
    for (int r = 0; r < N_REQS; r++) free(batch[r]);
    free(zero_img);
    free(alone);
    fl_flux_free(m);
}

/* fl_flux_sample_pixels (every attached adapter on every row) is the batch sampler's request
 * listing every set in attach order with multiplier 1, bitwise. */
static void test_single_sampler_is_batch_of_one(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    size_t n = image_floats();
    float *single = malloc(n * sizeof(float)), *batched = malloc(n * sizeof(float));
    fl_sample_params sp = {"sks dog on the beach", WIDTH, HEIGHT, STEPS, 3.5f, 99, TEXT_TOKENS};
    fl_error err = {0};
    FL_EXPECTF(fl_flux_sample_pixels(m, &sp, single, &err) == 0, "%s", err.message);
    fl_sample_request req;
    memset(&req, 0, sizeof req);
    req.prompt = sp.prompt;
    req.seed = sp.seed;
    req.guidance = sp.guidance;
    req.adapters = adapters_of(N_SETS, ids, (float[]){1.0f, 1.0f, 1.0f, 1.0f});
    if (sample_one(m, &req, batched)) FL_EXPECT(memcmp(single, batched, n * sizeof(float)) == 0);
    free(single);
    free(batched);
    fl_flux_free(m);
}

/* ---- resident adapters: attached once, selected per batch ------------------------------------- */

static bool images_equal(float *const *a, float *const *b, int n) {
    for (int r = 0; r < n; r++)
        if (memcmp(a[r], b[r], image_floats() * sizeof(float)) != 0) return false;
    return true;
}

static void test_resident_sets_plan_nothing(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    fl_sample_request reqs[N_REQS];
    make_requests(ids, reqs);
    float *first[N_REQS], *again[N_REQS];
    for (int r = 0; r < N_REQS; r++) {
        first[r] = malloc(image_floats() * sizeof(float));
        again[r] = malloc(image_floats() * sizeof(float));
    }
    fl_error err = {0};
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, first, &err) == 0,
               "%s", err.message);
    uint64_t plans = fl_flux_plan_count(m);
    size_t arena = fl_flux_activation_bytes(m);
    FL_EXPECT(plans >= 1);
    /* The same batch again, and another selection of the same sets: no plan. */
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, again, &err) == 0,
               "%s", err.message);
    FL_EXPECT(images_equal(first, again, N_REQS));
    fl_sample_request shuffled[N_REQS];
    for (int r = 0; r < N_REQS; r++) shuffled[r] = reqs[N_REQS - 1 - r];
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, shuffled, N_REQS, again, &err) == 0,
               "%s", err.message);
    for (int r = 0; r < N_REQS; r++)
        FL_EXPECTF(memcmp(again[r], first[N_REQS - 1 - r], image_floats() * sizeof(float)) == 0, "request %d", r);
    FL_EXPECTF(fl_flux_plan_count(m) == plans, "%llu plans, %llu before", (unsigned long long)fl_flux_plan_count(m),
               (unsigned long long)plans);
    /* More sets attached than one sample may use (none wider than rank 3), and some removed: the
     * plan and the images do not change. */
    enum { EXTRA = FL_FLUX_MAX_ADAPTERS + 4 };
    int extra[EXTRA];
    for (int i = 0; i < EXTRA; i++) extra[i] = attach_random(m, i % 2 ? "attention" : NULL, 1 + i % 3, 2.0f, 5000 + 100 * (uint64_t)i);
    for (int i = 0; i < EXTRA; i += 3) FL_EXPECTF(fl_flux_remove_adapter(m, extra[i], &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, again, &err) == 0,
               "%s", err.message);
    FL_EXPECT(images_equal(first, again, N_REQS));
    FL_EXPECT(fl_flux_plan_count(m) == plans && fl_flux_activation_bytes(m) == arena);
    /* A request naming one of the new sets next to the old ones: still no plan; the old requests
     * keep their images. */
    fl_sample_request mixed[N_REQS];
    memcpy(mixed, reqs, sizeof mixed);
    mixed[0].adapters = adapters_of(2, (int[]){extra[1], ids[2]}, (float[]){1.0f, 0.5f});
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, mixed, N_REQS, again, &err) == 0,
               "%s", err.message);
    FL_EXPECT(images_equal(first + 1, again + 1, N_REQS - 1));
    FL_EXPECT(memcmp(first[0], again[0], image_floats() * sizeof(float)) != 0);
    FL_EXPECT(fl_flux_plan_count(m) == plans);
    /* Another batch size is another shape: one plan, then none. */
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, 2, again, &err) == 0, "%s",
               err.message);
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, 2, again, &err) == 0, "%s",
               err.message);
    FL_EXPECT(fl_flux_plan_count(m) == plans + 1 && images_equal(first, again, 2));
    /* A rank wider than any before widens the scratch: one plan, images unchanged. */
    int wide = attach_random(m, NULL, 9, 9.0f, 7000);
    FL_EXPECT(wide >= 0);
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, again, &err) == 0,
               "%s", err.message);
    FL_EXPECT(fl_flux_plan_count(m) == plans + 2 && images_equal(first, again, N_REQS));
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, again, &err) == 0,
               "%s", err.message);
    FL_EXPECT(fl_flux_plan_count(m) == plans + 2);
    for (int r = 0; r < N_REQS; r++) {
        free(first[r]);
        free(again[r]);
    }
    fl_flux_free(m);
}

/* Attach limits and the size of an attached set. */
static void test_attach_limits(void) {
    fl_flux_model *m = load_model("b");
    if (!m) return;
    fl_error err = {0};
    size_t n = fl_flux_linear_count(m);
    fl_flux_linear *lin = fl_flux_linear_at(m, n / 2);
    float *a = calloc((size_t)(2 * lin->in), sizeof(float)), *b = calloc((size_t)(2 * lin->out), sizeof(float));
    fl_flux_lora_pair pair = {lin->name, 2, a, b, 2.0f};
    FL_EXPECT(fl_flux_adapter_device_bytes(m, &pair, 1) == (size_t)(2 * (lin->in + lin->out)) * sizeof(float));
    int first = -1, id = -1;
    for (int i = 0; i < FL_FLUX_MAX_ATTACHED; i++) {
        id = fl_flux_add_adapter(m, &pair, 1, 1.0f, false, &err);
        FL_EXPECTF(id >= 0, "%s", err.message);
        if (i == 0) first = id;
    }
    FL_EXPECT(fl_flux_add_adapter(m, &pair, 1, 1.0f, false, &err) == -1 && err.code == FL_ELIMIT);
    FL_EXPECT(fl_flux_adapter_attached(m, first) && fl_flux_adapter_attached(m, id));
    FL_EXPECTF(fl_flux_remove_adapter(m, first, &err) == 0, "%s", err.message);
    FL_EXPECT(!fl_flux_adapter_attached(m, first));
    int next = fl_flux_add_adapter(m, &pair, 1, 1.0f, false, &err);
    FL_EXPECT(next > id); /* ids are never reused */
    fl_flux_clear_adapters(m);
    FL_EXPECT(!fl_flux_adapter_attached(m, next));
    free(a);
    free(b);
    fl_flux_free(m);
}

/* ---- raw forwards (config a: guidance embedding, qkv bias, latent channels) -------------------- */

typedef struct batch_inputs {
    int64_t batch, li, lt;
    float *img, *txt, *y, *t, *g, *img_ids, *txt_ids;
    fl_tensor img_t, txt_t, y_t, t_t, g_t;
    fl_flux_inputs in;
} batch_inputs;

static void make_inputs(const fl_flux_params *p, int64_t batch, int64_t li, int64_t lt, uint64_t seed,
                        batch_inputs *bi) {
    memset(bi, 0, sizeof *bi);
    bi->batch = batch, bi->li = li, bi->lt = lt;
    bi->img = fl_test_randn((size_t)(batch * li * p->in_channels), seed, 1.0f);
    bi->txt = fl_test_randn((size_t)(batch * lt * p->context_in_dim), seed + 1, 1.0f);
    bi->y = fl_test_randn((size_t)(batch * p->vec_in_dim), seed + 2, 1.0f);
    bi->t = fl_test_rand_uniform((size_t)batch, seed + 3, 0.05f, 0.95f);
    bi->g = fl_test_rand_uniform((size_t)batch, seed + 4, 1.0f, 5.0f);
    bi->img_ids = fl_test_rand_uniform((size_t)(batch * li * p->n_axes), seed + 5, 0.0f, 8.0f);
    bi->txt_ids = fl_test_rand_uniform((size_t)(batch * lt * p->n_axes), seed + 6, 0.0f, 3.0f);
    for (int64_t i = 0; i < batch * li * p->n_axes; i++) bi->img_ids[i] = floorf(bi->img_ids[i]);
    for (int64_t i = 0; i < batch * lt * p->n_axes; i++) bi->txt_ids[i] = floorf(bi->txt_ids[i]);
    bi->img_t = fl_tensor_f32_3d(bi->img, batch, li, p->in_channels);
    bi->txt_t = fl_tensor_f32_3d(bi->txt, batch, lt, p->context_in_dim);
    bi->y_t = fl_tensor_f32_2d(bi->y, batch, p->vec_in_dim);
    bi->t_t = fl_tensor_f32_1d(bi->t, batch);
    bi->g_t = fl_tensor_f32_1d(bi->g, batch);
    bi->in = (fl_flux_inputs){&bi->img_t, &bi->txt_t, &bi->y_t, &bi->t_t, p->guidance_embed ? &bi->g_t : NULL,
                              bi->img_ids, bi->txt_ids};
}

/* Sample b of bi as a batch of one (views into bi's arrays). */
static void sample_view(const fl_flux_params *p, const batch_inputs *bi, int64_t b, batch_inputs *one) {
    *one = *bi;
    one->batch = 1;
    one->img_t = fl_tensor_f32_3d(bi->img + b * bi->li * p->in_channels, 1, bi->li, p->in_channels);
    one->txt_t = fl_tensor_f32_3d(bi->txt + b * bi->lt * p->context_in_dim, 1, bi->lt, p->context_in_dim);
    one->y_t = fl_tensor_f32_2d(bi->y + b * p->vec_in_dim, 1, p->vec_in_dim);
    one->t_t = fl_tensor_f32_1d(bi->t + b, 1);
    one->g_t = fl_tensor_f32_1d(bi->g + b, 1);
    one->in = (fl_flux_inputs){&one->img_t, &one->txt_t, &one->y_t, &one->t_t, p->guidance_embed ? &one->g_t : NULL,
                               bi->img_ids + b * bi->li * p->n_axes, bi->txt_ids + b * bi->lt * p->n_axes};
}

static void free_inputs(batch_inputs *bi) {
    free(bi->img), free(bi->txt), free(bi->y), free(bi->t), free(bi->g), free(bi->img_ids), free(bi->txt_ids);
}

/* The forward of bi under the current adapters, copied out. */
static float *forward_copy(fl_flux_model *m, const fl_flux_inputs *in, size_t *count) {
    fl_tensor out;
    fl_error err = {0};
    if (fl_flux_forward(m, in, &out, &err) != 0) {
        FL_EXPECTF(0, "forward: %s", err.message);
        return NULL;
    }
    *count = (size_t)fl_tensor_numel(&out);
    float *copy = malloc(*count * sizeof(float));
    memcpy(copy, out.data, *count * sizeof(float));
    return copy;
}

static void test_forward_per_sample_matches_alone(void) {
    fl_flux_model *m = load_model("a");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "a", ids)) {
        fl_flux_free(m);
        return;
    }
    const fl_flux_params *p = fl_flux_get_params(m);
    fl_sample_request reqs[N_REQS];
    make_requests(ids, reqs);
    fl_flux_sample_adapters sel[N_REQS];
    for (int r = 0; r < N_REQS; r++) sel[r] = reqs[r].adapters;
    batch_inputs bi;
    make_inputs(p, N_REQS, 15, 5, 7, &bi);
    fl_error err = {0};
    FL_EXPECTF(fl_flux_set_sample_adapters(m, N_REQS, sel, &err) == 0, "%s", err.message);
    size_t count = 0, one_count = 0;
    float *batch = forward_copy(m, &bi.in, &count);
    size_t per = count / N_REQS;
    for (int b = 0; batch && b < N_REQS; b++) {
        batch_inputs one;
        sample_view(p, &bi, b, &one);
        FL_EXPECTF(fl_flux_set_sample_adapters(m, 1, &sel[b], &err) == 0, "%s", err.message);
        float *alone = forward_copy(m, &one.in, &one_count);
        if (alone) FL_EXPECTF(one_count == per && memcmp(alone, batch + b * per, per * sizeof(float)) == 0,
                              "sample %d: the batch forward differs from the forward alone", b);
        free(alone);
    }
    free(batch);
    free_inputs(&bi);
    fl_flux_free(m);
}

/* Every sample with every attached set at multiplier 1 is the every-row mode: bitwise for a batch
 * of one (same products in the same order); for a batch the base products differ only in GEMM
 * rounding. */
static void test_per_sample_matches_every_row(void) {
    fl_flux_model *m = load_model("a");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "a", ids)) {
        fl_flux_free(m);
        return;
    }
    const fl_flux_params *p = fl_flux_get_params(m);
    enum { B = 4 };
    batch_inputs bi;
    make_inputs(p, B, 15, 5, 21, &bi);
    fl_flux_sample_adapters all[B];
    for (int b = 0; b < B; b++) all[b] = adapters_of(N_SETS, ids, (float[]){1.0f, 1.0f, 1.0f, 1.0f});
    size_t n_global = 0, n_sel = 0;
    float *global = forward_copy(m, &bi.in, &n_global);
    fl_error err = {0};
    FL_EXPECTF(fl_flux_set_sample_adapters(m, B, all, &err) == 0, "%s", err.message);
    float *sel = forward_copy(m, &bi.in, &n_sel);
    if (global && sel && n_global == n_sel) {
        double scale = 0, worst = 0;
        for (size_t i = 0; i < n_global; i++) scale = fmax(scale, fabs(global[i]));
        for (size_t i = 0; i < n_global; i++) worst = fmax(worst, fabs((double)sel[i] - global[i]));
        printf("  batch of %d, per-sample vs every-row: max |diff| / scale = %.2e (%s)\n", B, worst / scale,
               memcmp(sel, global, n_global * sizeof(float)) ? "not bitwise" : "bitwise");
        FL_EXPECT_CLOSE("per-sample vs every-row", sel, global, n_global, 1e-5 * scale, 0.0);
    }
    free(global);
    free(sel);
    /* a batch of one: bitwise */
    batch_inputs one;
    sample_view(p, &bi, 2, &one);
    fl_flux_clear_sample_adapters(m);
    global = forward_copy(m, &one.in, &n_global);
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 1, &all[0], &err) == 0, "%s", err.message);
    sel = forward_copy(m, &one.in, &n_sel);
    if (global && sel) FL_EXPECT(n_global == n_sel && memcmp(sel, global, n_global * sizeof(float)) == 0);
    free(global);
    free(sel);
    /* a multiplier scales like an attach-time multiplier (up to the order of the two products) */
    fl_flux_clear_sample_adapters(m);
    fl_flux_clear_adapters(m);
    int id = attach_file(m, "a", "lora", 0.6f);
    global = forward_copy(m, &one.in, &n_global);
    fl_flux_clear_adapters(m);
    id = attach_file(m, "a", "lora", 1.0f);
    fl_flux_sample_adapters s = adapters_of(1, &id, (float[]){0.6f});
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 1, &s, &err) == 0, "%s", err.message);
    sel = forward_copy(m, &one.in, &n_sel);
    if (global && sel && n_global == n_sel) FL_EXPECT_CLOSE("multiplier vs attach scale", sel, global, n_sel, 1e-5, 1e-5);
    free(global);
    free(sel);
    free_inputs(&bi);
    fl_flux_free(m);
}

/* ---- removing adapters ------------------------------------------------------------------------- */

static void test_remove_adapter(void) {
    fl_flux_model *m = load_model("a"), *ref = load_model("a");
    int ids[N_SETS], ref_ids[N_SETS];
    if (!m || !ref || !attach_sets(m, "a", ids) || !attach_sets(ref, "a", ref_ids)) {
        fl_flux_free(m);
        fl_flux_free(ref);
        return;
    }
    fl_error err = {0};
    FL_EXPECTF(fl_flux_remove_adapter(m, ids[1], &err) == 0, "%s", err.message);
    FL_EXPECT(fl_flux_remove_adapter(m, ids[1], &err) == -1 && err.code == FL_EINVAL);
    /* ref: sets 0, 2, 3 selected for one sample == m with set 1 removed, every row */
    batch_inputs bi;
    make_inputs(fl_flux_get_params(m), 1, 15, 5, 33, &bi);
    fl_flux_sample_adapters keep = adapters_of(3, (int[]){ref_ids[0], ref_ids[2], ref_ids[3]},
                                               (float[]){1.0f, 1.0f, 1.0f});
    FL_EXPECTF(fl_flux_set_sample_adapters(ref, 1, &keep, &err) == 0, "%s", err.message);
    size_t n1 = 0, n2 = 0;
    float *want = forward_copy(ref, &bi.in, &n1), *got = forward_copy(m, &bi.in, &n2);
    if (want && got) FL_EXPECT(n1 == n2 && memcmp(want, got, n1 * sizeof(float)) == 0);
    free(want);
    free(got);
    /* a selection naming a removed set fails at the forward */
    fl_flux_sample_adapters stale = adapters_of(1, &ids[2], (float[]){1.0f});
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 1, &stale, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_flux_remove_adapter(m, ids[2], &err) == 0, "%s", err.message);
    fl_tensor out;
    FL_EXPECT(fl_flux_forward(m, &bi.in, &out, &err) == -1 && err.code == FL_EINVAL &&
              strstr(err.message, "not attached"));
    /* a new set after removals gets a fresh id and works */
    int fresh = attach_random(m, "attention", 2, 2.0f, 3000);
    FL_EXPECT(fresh > ids[3]);
    fl_flux_sample_adapters f = adapters_of(2, (int[]){fresh, ids[0]}, (float[]){1.0f, 1.0f});
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 1, &f, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_flux_forward(m, &bi.in, &out, &err) == 0, "%s", err.message);
    free_inputs(&bi);
    fl_flux_free(m);
    fl_flux_free(ref);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void test_errors(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    fl_error err = {0};
    fl_flux_sample_adapters two[2] = {adapters_of(1, &ids[0], (float[]){1.0f}), adapters_of(0, NULL, NULL)};
    FL_EXPECTF(fl_flux_set_sample_adapters(m, 2, two, &err) == 0, "%s", err.message);

    fl_flux_sample_adapters bad = adapters_of(1, (int[]){ids[3] + 40}, (float[]){1.0f});
    FL_EXPECT(fl_flux_set_sample_adapters(m, 1, &bad, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "not attached") != NULL, "%s", err.message);
    FL_EXPECT(fl_flux_sample_adapters_batch(m) == 2); /* the previous selection stays */
    FL_EXPECT(fl_flux_set_sample_adapters(m, 0, two, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECT(fl_flux_set_sample_adapters(m, 1, NULL, &err) == -1 && err.code == FL_EINVAL);
    bad = adapters_of(1, &ids[0], (float[]){NAN});
    FL_EXPECT(fl_flux_set_sample_adapters(m, 1, &bad, &err) == -1 && err.code == FL_EINVAL);
    bad.n = FL_FLUX_MAX_ADAPTERS + 1;
    FL_EXPECT(fl_flux_set_sample_adapters(m, 1, &bad, &err) == -1 && err.code == FL_EINVAL);
    bad.n = -1;
    FL_EXPECT(fl_flux_set_sample_adapters(m, 1, &bad, &err) == -1 && err.code == FL_EINVAL);

    /* a forward of another batch size than the selection's */
    const fl_flux_params *p = fl_flux_get_params(m);
    batch_inputs bi;
    make_inputs(p, 3, 6, 4, 5, &bi);
    fl_tensor out;
    FL_EXPECT(fl_flux_forward(m, &bi.in, &out, &err) == -1 && err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "per-sample adapters were set for 2 samples") != NULL, "%s", err.message);
    /* training refuses while a selection is set */
    fl_tensor noise = bi.img_t;
    double loss = 0;
    FL_EXPECT(fl_flux_loss_and_grads(m, &bi.in, &bi.img_t, &noise, &loss, &err) == -1 && err.code == FL_EINVAL);
    /* the batch sampler: an unknown set in a request, n < 1; the selection is put back after */
    fl_sample_request reqs[2];
    memset(reqs, 0, sizeof reqs);
    reqs[1].adapters = adapters_of(1, (int[]){-3}, (float[]){1.0f});
    float *img[2] = {malloc(image_floats() * sizeof(float)), malloc(image_floats() * sizeof(float))};
    FL_EXPECT(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, 2, img, &err) == -1 &&
              err.code == FL_EINVAL);
    FL_EXPECTF(strstr(err.message, "sample 1: adapter set -3 is not attached") != NULL, "%s", err.message);
    FL_EXPECT(fl_flux_sample_adapters_batch(m) == 2);
    FL_EXPECT(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, 0, img, &err) == -1 &&
              err.code == FL_EINVAL);
    FL_EXPECT(fl_flux_sample_pixels_batch(m, WIDTH + 1, HEIGHT, STEPS, TEXT_TOKENS, reqs, 1, img, &err) == -1 &&
              err.code == FL_EINVAL);
    /* after the errors the model still runs, in both modes */
    fl_flux_clear_sample_adapters(m);
    FL_EXPECT(fl_flux_sample_adapters_batch(m) == 0);
    FL_EXPECTF(fl_flux_forward(m, &bi.in, &out, &err) == 0, "%s", err.message);
    FL_EXPECTF(fl_flux_loss_and_grads(m, &bi.in, &bi.img_t, &noise, &loss, &err) == 0, "%s", err.message);
    reqs[1].adapters.n = 0;
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, 2, img, &err) == 0, "%s",
               err.message);
    free(img[0]);
    free(img[1]);
    free_inputs(&bi);
    fl_flux_free(m);
}

/* The per-step callback: asked before every step with the steps done; answering true stops the
 * run before that step's forward, writes no image and puts the selection back. */
typedef struct step_log {
    int calls, stop_at, last_done, steps;
} step_log;

static bool log_step(void *arg, int done, int steps) {
    step_log *l = arg;
    FL_EXPECTF(done == l->calls && steps == STEPS, "callback %d got done %d of %d", l->calls, done, steps);
    l->calls++;
    l->last_done = done;
    return done == l->stop_at;
}

static void test_step_hook(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    fl_sample_request reqs[N_REQS];
    make_requests(ids, reqs);
    size_t n = image_floats();
    float *plain[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    float *hooked[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    fl_error err = {0};
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs + 1, 2, plain, &err) == 0, "%s",
               err.message);
    step_log never = {0, -1, -1, STEPS};
    fl_sample_hooks hooks = {log_step, &never};
    FL_EXPECTF(fl_flux_sample_pixels_batch_hooked(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs + 1, 2, &hooks, hooked,
                                                  &err) == 0, "%s", err.message);
    FL_EXPECT(never.calls == STEPS && never.last_done == STEPS - 1);
    FL_EXPECT(!memcmp(plain[0], hooked[0], n * sizeof(float)) && !memcmp(plain[1], hooked[1], n * sizeof(float)));
    /* Stopped before the second step: an error naming the step, the images untouched. */
    for (size_t i = 0; i < n; i++) hooked[0][i] = hooked[1][i] = 7.0f;
    step_log stop = {0, 1, -1, STEPS};
    hooks.arg = &stop;
    FL_EXPECT(fl_flux_sample_pixels_batch_hooked(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs + 1, 2, &hooks, hooked,
                                                 &err) == -1 && err.code == FL_EUNAVAILABLE);
    FL_EXPECTF(strstr(err.message, "stopped at step 1 of 3") != NULL, "%s", err.message);
    FL_EXPECT(stop.calls == 2 && hooked[0][0] == 7.0f && hooked[1][n - 1] == 7.0f);
    FL_EXPECT(fl_flux_sample_adapters_batch(m) == 0);
    /* The model runs on as before. */
    FL_EXPECTF(fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs + 1, 2, hooked, &err) == 0, "%s",
               err.message);
    FL_EXPECT(!memcmp(plain[0], hooked[0], n * sizeof(float)));
    for (int i = 0; i < 2; i++) {
        free(plain[i]);
        free(hooked[i]);
    }
    fl_flux_free(m);
}

/* ---- classifier-free guidance ---------------------------------------------------------------- */

static bool sample_steps(fl_flux_model *m, const char *prompt, float guidance, int steps, float *image) {
    fl_sample_params sp = {prompt, WIDTH, HEIGHT, steps, guidance, 5, TEXT_TOKENS};
    fl_error err = {0};
    int rc = fl_flux_sample_pixels(m, &sp, image, &err);
    FL_EXPECTF(rc == 0, "sample: %s", err.message);
    return rc == 0;
}

static void test_classifier_free_guidance(void) {
    fl_flux_model *m = load_model("b");
    int ids[N_SETS];
    if (!m || !attach_sets(m, "b", ids)) {
        fl_flux_free(m);
        return;
    }
    size_t n = image_floats();
    float *g1 = malloc(n * sizeof(float)), *g3 = malloc(n * sizeof(float)), *un = malloc(n * sizeof(float));
    /* Without caption dropout in its training the value means nothing to this model. */
    FL_EXPECT(!fl_flux_cfg_capable(m));
    if (sample_steps(m, "a red fox", 1.0f, STEPS, g1) && sample_steps(m, "a red fox", 3.0f, STEPS, g3))
        FL_EXPECT(memcmp(g1, g3, n * sizeof(float)) == 0);
    fl_flux_set_cfg_capable(m, true);
    float *g1_cfg = malloc(n * sizeof(float));
    if (sample_steps(m, "a red fox", 1.0f, STEPS, g1_cfg)) FL_EXPECT(memcmp(g1, g1_cfg, n * sizeof(float)) == 0);
    if (sample_steps(m, "a red fox", 3.0f, STEPS, g3)) FL_EXPECT(memcmp(g1, g3, n * sizeof(float)) != 0);
    /* One Euler step from t = 1 is x = noise - v: linear in v, so the guided image is the CFG
     * combination of the prompt's and the empty caption's images wherever none was clamped. */
    if (sample_steps(m, "a red fox", 1.0f, 1, g1) && sample_steps(m, "", 1.0f, 1, un) &&
        sample_steps(m, "a red fox", 3.0f, 1, g3)) {
        size_t checked = 0;
        double worst = 0;
        for (size_t i = 0; i < n; i++) {
            if (fabsf(g1[i]) >= 1.0f || fabsf(un[i]) >= 1.0f || fabsf(g3[i]) >= 1.0f) continue;
            double want = un[i] + 3.0 * (g1[i] - un[i]);
            if (fabs(want) >= 0.999) continue;
            worst = fmax(worst, fabs(g3[i] - want));
            checked++;
        }
        FL_EXPECTF(checked > 10 && worst < 1e-4, "CFG combination: %zu pixels checked, worst error %g", checked, worst);
    }
    /* The mixed batch (guidance 1 to 6, adapters) still gives every request its solo image. */
    fl_sample_request reqs[N_REQS];
    make_requests(ids, reqs);
    float *batch[N_REQS], *alone = malloc(n * sizeof(float));
    for (int r = 0; r < N_REQS; r++) batch[r] = malloc(n * sizeof(float));
    fl_error err = {0};
    int rc = fl_flux_sample_pixels_batch(m, WIDTH, HEIGHT, STEPS, TEXT_TOKENS, reqs, N_REQS, batch, &err);
    FL_EXPECTF(rc == 0, "batch: %s", err.message);
    for (int r = 0; rc == 0 && r < N_REQS; r++) {
        if (!sample_one(m, &reqs[r], alone)) break;
        FL_EXPECTF(memcmp(alone, batch[r], n * sizeof(float)) == 0, "request %d (guidance %g): batch differs from alone",
                   r, reqs[r].guidance);
    }
    /* Request 2 has guidance 1: the same image as without any CFG in the model. */
    fl_flux_set_cfg_capable(m, false);
    if (rc == 0 && sample_one(m, &reqs[2], alone)) FL_EXPECT(memcmp(alone, batch[2], n * sizeof(float)) == 0);
    for (int r = 0; r < N_REQS; r++) free(batch[r]);
    free(alone), free(g1), free(g3), free(un), free(g1_cfg);
    fl_flux_free(m);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    fl_threads_set(threads);
    printf("threads: %d\n", fl_threads_get());
    cpu = fl_ctx_create(fl_device_cpu(), NULL);
    FL_RUN(test_batch_sampler_matches_alone);
    FL_RUN(test_single_sampler_is_batch_of_one);
    FL_RUN(test_forward_per_sample_matches_alone);
    FL_RUN(test_per_sample_matches_every_row);
    FL_RUN(test_remove_adapter);
    FL_RUN(test_resident_sets_plan_nothing);
    FL_RUN(test_attach_limits);
    FL_RUN(test_errors);
    FL_RUN(test_step_hook);
    FL_RUN(test_classifier_free_guidance);
    fl_ctx_destroy(cpu);
    return fl_test_finish();
}
