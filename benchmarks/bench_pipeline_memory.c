/*
 * bench_pipeline_memory.c — memory of the real FLUX.1 pipeline at real shapes, from the planning
 * mode over the committed manifests (no weights, no data, a second or so on any machine):
 *
 *   bench_pipeline_memory FIXTURES_DIR [THREADS]
 *
 * reads flux1-dev.manifest.json, text/t5-xxl.manifest.json, text/clip-l.manifest.json and
 * ae.manifest.json, and prints, for the CPU (f32 storage) and CUDA (bf16 storage) backends:
 *   - a LoRA training step at 512x512 and 1024x1024, batch 1 (rank 16 on every Linear of the
 *     blocks, the flashlora default), with the text encoders and the autoencoder's encoder dropped
 *     as `flashlora train` does; and the encoding phase before it (all parts resident, the larger
 *     of a T5 pass over 512 tokens and an autoencoder encode);
 *   - one 1024x1024 generation step with the four models resident (a serving worker), and the
 *     larger of its passes (T5 + CLIP, the transformer's forward, the autoencoder's decode).
 * Every figure is the sum of resident weights and the peak of the passes that run one after the
 * other (their arenas are separate; this adds them as if each ran alone on top of the weights).
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/ae.h"
#include "models/family.h"
#include "models/flux.h"
#include "models/text/clip_text.h"
#include "models/text/t5_encoder.h"

#define GB(x) ((double)(x) / 1e9)

typedef struct manifest {
    json_t *root;
    fl_tensor_header *h;
    size_t n;
} manifest;

static int load(const char *dir, const char *name, manifest *m) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_error_t e;
    m->root = json_load_file(path, 0, &e);
    json_t *list = m->root ? json_object_get(m->root, "tensors") : NULL;
    if (!json_is_array(list)) {
        fprintf(stderr, "%s: not a manifest (%s)\n", path, e.text);
        return -1;
    }
    m->n = json_array_size(list);
    m->h = calloc(m->n, sizeof *m->h);
    for (size_t i = 0; i < m->n; i++) {
        json_t *t = json_array_get(list, i), *shape = json_array_get(t, 1);
        m->h[i].name = json_string_value(json_array_get(t, 0));
        m->h[i].ndim = (int)json_array_size(shape);
        for (int d = 0; d < m->h[i].ndim && d < FL_SAFETENSORS_MAX_DIMS; d++)
            m->h[i].shape[d] = json_integer_value(json_array_get(shape, (size_t)d));
    }
    return 0;
}

static void unload(manifest *m) {
    free(m->h);
    json_decref(m->root);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: bench_pipeline_memory FIXTURES_DIR [THREADS]\n");
        return 2;
    }
    int threads = argc > 2 ? atoi(argv[2]) : 2;
    manifest fm, tm, cm, am;
    if (load(argv[1], "flux1-dev.manifest.json", &fm) || load(argv[1], "text/t5-xxl.manifest.json", &tm) ||
        load(argv[1], "text/clip-l.manifest.json", &cm) || load(argv[1], "ae.manifest.json", &am))
        return 1;
    fl_error err = {0};
    fl_family_info fam;
    fl_t5_params t5;
    fl_clip_params clip;
    fl_ae_source ae;
    char prefix[FL_TEXT_PREFIX_MAX];
    if (fl_detect_family(fm.h, fm.n, &fam, &err) || fl_flux_check_entries(fm.h, fm.n, "", &fam.flux, &err) ||
        fl_t5_params_infer(tm.h, tm.n, &t5, prefix, &err) || fl_t5_check_entries(tm.h, tm.n, prefix, &t5, &err) ||
        fl_clip_params_infer(cm.h, cm.n, &clip, prefix, &err) || fl_clip_check_entries(cm.h, cm.n, prefix, &clip, &err) ||
        fl_ae_detect(am.h, am.n, &ae, &err) || fl_ae_check_entries(am.h, am.n, &ae, FL_AE_BOTH, &err)) {
        fprintf(stderr, "a manifest does not bind: %s\n", err.message);
        return 1;
    }
    printf("manifests bind: FLUX.1-%s (%zu tensors), T5-XXL encoder (%zu; d_model %d, %d layers, %d heads), "
           "CLIP-L text (%zu; hidden %d, %d layers), AE (%zu; z %d)\n\n",
           fam.variant, fm.n, tm.n, t5.d_model, t5.num_layers, t5.num_heads, cm.n, clip.hidden_size, clip.num_layers,
           am.n, ae.params.z_channels);
    printf("| device | job | transformer weights | LoRA + AdamW | transformer activations + inputs | T5 + CLIP weights | "
           "AE weights | largest other pass | peak |\n|---|---|---|---|---|---|---|---|---|\n");
    const fl_device_kind kinds[2] = {FL_DEVICE_CPU, FL_DEVICE_CUDA};
    int rc = 0;
    bool fits_80gb = false;
    for (int k = 0; k < 2 && rc == 0; k++) {
        fl_device_kind dev = kinds[k];
        const char *dname = dev == FL_DEVICE_CPU ? "CPU f32" : "CUDA bf16";
        size_t t5w, t5a, cw, ca;
        fl_t5_encoder_memory(&t5, 512, dev, &t5w, &t5a);
        fl_clip_text_memory(&clip, 77, dev, &cw, &ca);
        size_t text_w = t5w + cw, text_a = t5a > ca ? t5a : ca;
        for (int side_i = 0; side_i < 3 && rc == 0; side_i++) {
            int side = side_i == 0 ? 512 : 1024;
            bool training = side_i < 2;
            fl_flux_job_shape s = {.device = dev, .batch = 1, .image_tokens = (int64_t)(side / 16) * (side / 16),
                                   .text_tokens = 512, .training = training, .lora_rank = 16, .targets = "all",
                                   .threads = threads};
            fl_flux_memory fmem;
            fl_ae_memory enc, dec;
            if (fl_flux_estimate_memory(&fam.flux, &s, &fmem, &err) != 0 ||
                fl_ae_estimate_memory(&ae.params, dev, FL_AE_BOTH, false, side, side, threads, &enc, &err) != 0 ||
                fl_ae_estimate_memory(&ae.params, dev, FL_AE_DECODER, true, side, side, threads, &dec, &err) != 0) {
                fprintf(stderr, "estimate: %s\n", err.message);
                rc = 1;
                break;
            }
            size_t flux_act = fmem.activations + fmem.inputs, lora = fmem.adapters + fmem.optimizer;
            if (training) {
                /* Encoding phase: every part resident, one T5/CLIP pass or one AE encode at a time. */
                size_t enc_pass = enc.total - enc.weights;
                size_t other = text_a > enc_pass ? text_a : enc_pass;
                size_t phase1 = fmem.weights + text_w + enc.weights + other;
                printf("| %s | LoRA %dx%d: encoding the set | %.2f GB | - | - | %.2f GB | %.2f GB | %.2f GB | %.2f GB |\n",
                       dname, side, side, GB(fmem.weights), GB(text_w), GB(enc.weights), GB(other), GB(phase1));
                /* The loop: text encoders and the AE encoder dropped (the decoder stays for previews). */
                size_t phase2 = fmem.weights + lora + flux_act + dec.weights;
                printf("| %s | LoRA step %dx%d, batch 1, rank 16 | %.2f GB | %.3f GB | %.2f GB | dropped | %.2f GB "
                       "(decoder) | - | **%.2f GB** |\n",
                       dname, side, side, GB(fmem.weights), GB(lora), GB(flux_act), GB(dec.weights), GB(phase2));
                if (dev == FL_DEVICE_CUDA && side == 1024) fits_80gb = phase2 < (size_t)80e9;
            } else {
                size_t dec_pass = dec.total - dec.weights;
                size_t other = text_a > dec_pass ? text_a : dec_pass;
                size_t resident = fmem.weights + text_w + dec.weights;
                size_t peak = resident + (flux_act > other ? flux_act : other);
                printf("| %s | generation %dx%d, batch 1 (T5 512 tokens) | %.2f GB | - | %.2f GB | %.2f GB | %.2f GB "
                       "(decoder) | %.2f GB | **%.2f GB** |\n",
                       dname, side, side, GB(fmem.weights), GB(flux_act), GB(text_w), GB(dec.weights), GB(other),
                       GB(peak));
            }
        }
    }
    if (rc == 0)
        printf("\nA 1024x1024 LoRA step with the text encoders dropped %s an 80 GB GPU (bf16).\n",
               fits_80gb ? "fits" : "does not fit");
    unload(&fm), unload(&tm), unload(&cm), unload(&am);
    return rc;
}
