/*
 * test_pipeline_trainer.c — a LoRA learns a subject on the tiny FLUX.1 pipeline
 * (tests/fixtures/pipeline/dev): images encoded to the autoencoder's latents (and flipped), captions
 * through T5 + CLIP, the empty caption for dropout; the held-out flow-matching loss (fixed
 * timesteps, a fixed noise seed independent of training) must fall by at least 25%. Also: the
 * pipeline's prompt cache answers a repeated prompt without the encoders, and once the encoders
 * are released a new prompt is refused with a message while cached ones still work.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "models/pipeline.h"
#include "trainer/trainer.h"

enum { N_IMAGES = 4, SIZE = 32 };

/* A red disc with a yellow square on blue, shifted per image (as tests/trainer/make_images.py). */
static void draw(int i, float *img) {
    int dx = i % 2 - 1, dy = i / 2;
    for (int y = 0; y < SIZE; y++)
        for (int x = 0; x < SIZE; x++) {
            float r = 30, g = 50, b = 200;
            int cx = 16 + 3 * dx, cy = 14 + 3 * dy;
            if ((x - cx) * (x - cx) + (y - cy) * (y - cy) <= 64) r = 230, g = 30, b = 30;
            if (abs(x - cx) <= 2 && abs(y - cy) <= 2) r = 240, g = 220, b = 40;
            float *p = img + ((size_t)y * SIZE + x) * 3;
            p[0] = r / 127.5f - 1, p[1] = g / 127.5f - 1, p[2] = b / 127.5f - 1;
        }
}

static void test_subject_is_learned(void) {
    fl_ctx *cpu = fl_ctx_create(fl_device_cpu(), NULL);
    char model[512];
    fl_test_data_path("fixtures/pipeline/dev", model, sizeof model);
    fl_pipeline_files files = {.model = model};
    fl_pipeline *p = NULL;
    fl_error err = {0};
    FL_EXPECTF(fl_pipeline_open(cpu, &files, &p, &err) == 0, "%s", err.message);
    if (!p) {
        fl_ctx_destroy(cpu);
        return;
    }
    const fl_pipeline_info *info = fl_pipeline_get_info(p);
    FL_EXPECT(info->kind == FL_PIPELINE_FLUX1 && !strcmp(info->variant, "dev") && info->text_tokens == 512 &&
              info->patch == 16 && info->default_steps == 28 && info->default_guidance == 3.5f && info->shift);
    int lt = info->text_tokens, cd = fl_pipeline_context_dim(p), vd = fl_pipeline_vec_dim(p);
    size_t tok = (size_t)fl_pipeline_image_tokens(p, SIZE, SIZE) * (size_t)fl_pipeline_token_channels(p);
    float *img = fl_xmalloc((size_t)SIZE * SIZE * 3 * sizeof(float)), *flip = fl_xmalloc((size_t)SIZE * SIZE * 3 * sizeof(float));
    float *tokens = fl_xmalloc(N_IMAGES * 2 * tok * sizeof(float));
    float *txt = fl_xmalloc(2 * (size_t)lt * (size_t)cd * sizeof(float)), *y = fl_xmalloc(2 * (size_t)vd * sizeof(float));
    fl_train_encoded ex[N_IMAGES];
    for (int i = 0; i < N_IMAGES; i++) {
        draw(i, img);
        for (int r = 0; r < SIZE; r++)
            for (int c = 0; c < SIZE; c++)
                memcpy(flip + ((size_t)r * SIZE + c) * 3, img + ((size_t)r * SIZE + (SIZE - 1 - c)) * 3, 3 * sizeof(float));
        FL_EXPECTF(fl_pipeline_encode_image(p, img, SIZE, SIZE, tokens + (size_t)(2 * i) * tok, &err) == 0, "%s",
                   err.message);
        FL_EXPECT(fl_pipeline_encode_image(p, flip, SIZE, SIZE, tokens + (size_t)(2 * i + 1) * tok, &err) == 0);
        ex[i] = (fl_train_encoded){tokens + (size_t)(2 * i) * tok, tokens + (size_t)(2 * i + 1) * tok, SIZE, SIZE,
                                   txt, y};
    }
    FL_EXPECT(fl_pipeline_encode_prompt(p, "a photo of sks", lt, txt, y, &err) == 0);
    FL_EXPECT(fl_pipeline_encode_prompt(p, "", lt, txt + (size_t)lt * cd, y + vd, &err) == 0);
    /* The encoders go; cached prompts stay usable, new ones are refused with a message. */
    fl_pipeline_release(p, FL_PIPELINE_TEXT | FL_PIPELINE_AE_ENCODER);
    float *t2 = fl_xmalloc((size_t)lt * (size_t)cd * sizeof(float)), *y2 = fl_xmalloc((size_t)vd * sizeof(float));
    FL_EXPECT(fl_pipeline_encode_prompt(p, "a photo of sks", lt, t2, y2, &err) == 0);
    FL_EXPECT(!memcmp(t2, txt, (size_t)lt * (size_t)cd * sizeof(float)));
    FL_EXPECT(fl_pipeline_encode_prompt(p, "something new", lt, t2, y2, &err) != 0 && strstr(err.message, "released"));
    FL_EXPECT(fl_pipeline_encode_image(p, img, SIZE, SIZE, tokens, &err) != 0);
    uint64_t hits = 0, misses = 0;
    fl_pipeline_prompt_cache_stats(p, &hits, &misses);
    FL_EXPECTF(hits == 1, "%llu prompt cache hits", (unsigned long long)hits);
    free(t2), free(y2);

    fl_train_config c = fl_train_config_default();
    c.steps = 50;
    c.rank = 4;
    c.alpha = 4;
    c.lr = 1e-2f;
    c.warmup_steps = 5;
    c.caption_dropout = 0.0f;
    c.max_text_tokens = lt;
    c.seed = 11;
    fl_trainer *t = fl_trainer_create_encoded(fl_pipeline_model(p), &c, info->patch, ex, N_IMAGES, txt + (size_t)lt * cd,
                                              y + vd, &err);
    FL_EXPECTF(t != NULL, "%s", err.message);
    if (t) {
        const float ts[4] = {0.2f, 0.4f, 0.6f, 0.8f};
        double before = fl_trainer_eval_loss(t, ts, 4, 1234);
        for (int s = 0; s < c.steps; s++) FL_EXPECT(fl_trainer_step(t, NULL, &err) == 0);
        double after = fl_trainer_eval_loss(t, ts, 4, 1234);
        printf("  held-out loss: untrained adapter %.4f, after %d steps %.4f (%.1f%% lower)\n", before, c.steps, after,
               100.0 * (1.0 - after / before));
        FL_EXPECTF(after <= 0.75 * before, "held-out loss %.4f -> %.4f: less than 25%% lower", before, after);
        fl_trainer_free(t);
    }
    free(img), free(flip), free(tokens), free(txt), free(y);
    fl_pipeline_free(p);
    fl_ctx_destroy(cpu);
}

int main(void) {
    FL_RUN(test_subject_is_learned);
    return fl_test_finish();
}
