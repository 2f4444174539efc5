/*
 * test_pipeline_files.c — finding a model's parts in the files users have (models/pipeline.h),
 * without loading weights: the BFL root files win over the diffusers folders, single files named
 * part by part override the folder, ComfyUI-style clip_l / t5xxl files at the root are found, the
 * variant (dev or schnell) and its defaults come from the transformer's tensors, a pixel-space file
 * is the pixel kind, and every missing part is named in one line.
 *
 * Folders are assembled in a temporary directory from the tiny pipeline fixtures (symbolic links).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "models/pipeline.h"

static char tmpdir[] = "/tmp/fl_pipeline_files_XXXXXX";

static void sh(const char *fmt, const char *a, const char *b) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, fmt, a, b);
    FL_CHECKF(system(cmd) == 0, "%s", cmd);
}

static const char *fx(const char *rel, char *buf, size_t size) {
    char r[256];
    snprintf(r, sizeof r, "fixtures/pipeline/%s", rel);
    const char *p = fl_test_data_path(r, buf, size);
    char *abs = realpath(p, NULL);
    if (abs) {
        snprintf(buf, size, "%s", abs);
        free(abs);
    }
    return buf;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static void test_bfl_root_and_diffusers_folders(void) {
    char dir[512], a[1024], b[1024];
    snprintf(dir, sizeof dir, "%s/both", tmpdir);
    sh("cp -r '%s' '%s'", fx("dev", a, sizeof a), dir);
    /* A dev folder that also has the schnell single files at the root: the root files win. */
    sh("ln -s '%s' '%s/flux1-schnell.safetensors'", fx("schnell/flux1-schnell.safetensors", a, sizeof a), dir);
    sh("ln -s '%s' '%s/ae.safetensors'", fx("schnell/ae.safetensors", a, sizeof a), dir);
    fl_pipeline_files f = {.model = dir};
    fl_pipeline_paths p;
    fl_pipeline_info info;
    fl_error err = {0};
    FL_EXPECTF(fl_pipeline_describe(&f, &p, &info, &err) == 0, "%s", err.message);
    FL_EXPECTF(ends_with(p.transformer, "/flux1-schnell.safetensors") && ends_with(p.ae, "/ae.safetensors") &&
                   ends_with(p.clip, "/text_encoder") && ends_with(p.t5, "/text_encoder_2") && !p.clip_tokenizer[0],
               "%s | %s | %s | %s", p.transformer, p.ae, p.clip, p.t5);
    FL_EXPECT(info.kind == FL_PIPELINE_FLUX1 && !strcmp(info.variant, "schnell") && info.text_tokens == 256 &&
              info.default_steps == 4 && !info.shift && info.patch == 16);
    /* Parts named one by one override the folder. */
    f.transformer = fx("dev/transformer", a, sizeof a);
    f.ae = fx("dev/vae", b, sizeof b);
    FL_EXPECTF(fl_pipeline_describe(&f, &p, &info, &err) == 0, "%s", err.message);
    FL_EXPECT(ends_with(p.transformer, "dev/transformer") && ends_with(p.ae, "dev/vae"));
    FL_EXPECT(!strcmp(info.variant, "dev") && info.text_tokens == 512 && info.default_steps == 28 &&
              info.default_guidance == 3.5f && info.shift);
    /* A dev transformer's folder alone reads its rotary axes from config.json. */
    FL_EXPECT(info.flux.n_axes == 3 && info.flux.axes_dim[0] == 4 && info.flux.axes_dim[1] == 6 &&
              info.flux.num_heads == 2 && info.flux.guidance_embed);
}

static void test_comfy_files_and_missing_parts(void) {
    char dir[512], a[1024];
    snprintf(dir, sizeof dir, "%s/comfy", tmpdir);
    sh("mkdir -p '%s'%s", dir, "");
    sh("ln -s '%s' '%s/flux1-schnell.safetensors'", fx("schnell/flux1-schnell.safetensors", a, sizeof a), dir);
    fl_pipeline_files f = {.model = dir};
    fl_pipeline_paths p;
    fl_pipeline_info info;
    fl_error err = {0};
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 && strstr(err.message, "no autoencoder (ae.safetensors "
                                                                                   "or vae/; or give --ae FILE)"));
    sh("ln -s '%s' '%s/ae.safetensors'", fx("schnell/ae.safetensors", a, sizeof a), dir);
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 && strstr(err.message, "no CLIP-L text encoder"));
    sh("ln -s '%s' '%s/clip_l.safetensors'", fx("dev/text_encoder/model.safetensors", a, sizeof a), dir);
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 && strstr(err.message, "no T5 text encoder"));
    sh("ln -s '%s' '%s/t5xxl_fp16.safetensors'", fx("dev/text_encoder_2/model-00001-of-00002.safetensors", a, sizeof a),
       dir);
    FL_EXPECTF(fl_pipeline_describe(&f, &p, &info, &err) == 0, "%s", err.message);
    FL_EXPECTF(ends_with(p.clip, "/clip_l.safetensors") && ends_with(p.t5, "/t5xxl_fp16.safetensors"), "%s | %s",
               p.clip, p.t5);
    /* No transformer at all; a path that does not exist. */
    char empty[512];
    snprintf(empty, sizeof empty, "%s/empty", tmpdir);
    sh("mkdir -p '%s'%s", empty, "");
    f.model = empty;
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 &&
              strstr(err.message, "no transformer (flux1-dev.safetensors, flux1-schnell.safetensors or transformer/)"));
    f.model = "/nonexistent/model";
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 && strstr(err.message, "/nonexistent/model: not found"));
    f.model = NULL;
    f.ae = "/nonexistent/ae.safetensors";
    f.transformer = a;
    FL_EXPECT(fl_pipeline_describe(&f, &p, &info, &err) != 0 && strstr(err.message, "/nonexistent/ae.safetensors"));
}

static void test_pixel_file(void) {
    char path[512];
    fl_test_data_path("fixtures/flux_b.model.safetensors", path, sizeof path);
    fl_pipeline_files f = {.model = path};
    fl_pipeline_paths p;
    fl_pipeline_info info;
    fl_error err = {0};
    FL_EXPECTF(fl_pipeline_describe(&f, &p, &info, &err) == 0, "%s", err.message);
    FL_EXPECT(info.kind == FL_PIPELINE_PIXELS && info.patch == 2 && info.default_steps == 20 && !strcmp(info.variant,
                                                                                                      "pixels"));
    char id[65];
    FL_EXPECT(fl_pipeline_base_id(&p, &info, id, &err) == 0 && strlen(id) == 64);
}

int main(void) {
    FL_CHECK(mkdtemp(tmpdir));
    FL_RUN(test_bfl_root_and_diffusers_folders);
    FL_RUN(test_comfy_files_and_missing_parts);
    FL_RUN(test_pixel_file);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return fl_test_finish();
}
