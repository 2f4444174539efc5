/*
 * lora_formats.h — writing LoRA adapters in the three file layouts flashlora reads back
 * (adapters/lora.h), and the module-name mapping between the original Flux checkpoint and the
 * diffusers FluxTransformer2DModel that the PEFT layout needs.
 *
 * Layouts (every tensor F32; ΔW = (alpha / rank) · B · A for A [rank, in], B [out, rank]):
 *
 *   canonical  "<module>.lora_A.weight", "<module>.lora_B.weight". Metadata "format" =
 *              "flashlora.lora.v1"; "rank" when every pair has the same rank. Alpha: when every
 *              pair has the same alpha, the "alpha" metadata entry and no alpha tensors; otherwise
 *              one scalar F32 tensor "<module>.alpha" (shape []) per module and no "alpha" entry.
 *
 *   kohya      "lora_unet_<module with '_' for '.'>.lora_down.weight" (A), ".lora_up.weight" (B),
 *              ".alpha" (scalar F32, shape []) for every module. The fused modules (qkv, linear1)
 *              stay fused, as in kohya's Flux layout. Metadata "ss_network_module" =
 *              "networks.lora_flux", and "ss_network_dim" / "ss_network_alpha" when uniform.
 *
 *   peft       the diffusers layout: "transformer.<diffusers module>.lora_A.weight" / ".lora_B.weight".
 *              A fused module becomes one key pair per part: every part keeps A and takes its rows
 *              of B (qkv: [H, H, H] -> to_q, to_k, to_v; linear1: [H, H, H, mlp] -> to_q, to_k, to_v,
 *              proj_mlp). final_layer.adaLN_modulation.1 (shift, scale) becomes norm_out.linear
 *              (scale, shift): the two halves of B's rows are swapped. Metadata "format" = "pt" and
 *              "lora_adapter_metadata": the JSON of a PEFT LoraConfig under the "transformer."
 *              prefix, as diffusers writes it — "r", "lora_alpha", and "rank_pattern" /
 *              "alpha_pattern" listing (by full diffusers module path) every part whose rank or
 *              alpha differs from r / lora_alpha, so each part's scale is stated exactly. When
 *              final_layer.linear (diffusers "proj_out") is adapted, r and lora_alpha are its own
 *              values: PEFT matches a pattern key "proj_out" against every module path ending in
 *              ".proj_out", so that short name is never written as a pattern. No alpha tensors are
 *              written (diffusers refuses a file that has both).
 *
 * Caller metadata is copied, except the keys each layout owns: "format", "rank", "alpha",
 * "lora_adapter_metadata", "ss_network_module", "ss_network_dim", "ss_network_alpha".
 */
#ifndef FL_ADAPTERS_LORA_FORMATS_H
#define FL_ADAPTERS_LORA_FORMATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters/lora.h"
#include "core/error.h"
#include "core/safetensors.h"
#include "models/flux.h"
#include "models/flux_names.h"

typedef enum fl_lora_layout { FL_LORA_CANONICAL = 0, FL_LORA_KOHYA, FL_LORA_PEFT } fl_lora_layout;

const char *fl_lora_layout_name(fl_lora_layout layout); /* "canonical", "kohya", "peft" */
/* Accepts those names and "diffusers" (= peft). 0, or -1 for an unknown name. */
int fl_lora_layout_from_name(const char *name, fl_lora_layout *out);

/* Write lora to path in the given layout, atomically (fl_safetensors_write). Every pair needs
 * rank >= 1, in/out >= 1 (lora->dims), both matrices and a finite alpha > 0; the PEFT layout also
 * needs every module to have a diffusers name with shapes that split as described above. Errors
 * name the module at fault. */
int fl_lora_save(const fl_lora *lora, fl_lora_layout layout, const char *path, const fl_safetensors_kv *metadata,
                 size_t n_metadata, fl_error *err);

/* Reads the adapter file at src (any layout flashlora reads) and writes it to path in layout,
 * carrying its metadata along (except the keys the layout owns, as above). */
int fl_lora_convert_file(const char *src, fl_lora_layout layout, const char *path, fl_error *err);

/* ---- module names ---------------------------------------------------------------------------- */

/* The module-name table is models/flux_names.h; these are its names as adapters spell them. */
#define FL_LORA_MAX_PARTS FL_FLUX_MAX_PARTS
typedef fl_flux_split fl_lora_split;
#define FL_LORA_SPLIT_NONE FL_FLUX_SPLIT_NONE
#define FL_LORA_SPLIT_QKV FL_FLUX_SPLIT_QKV
#define FL_LORA_SPLIT_QKV_MLP FL_FLUX_SPLIT_QKV_MLP
#define FL_LORA_SPLIT_SWAP_HALVES FL_FLUX_SPLIT_SWAP_HALVES
typedef fl_flux_diffusers_map fl_lora_diffusers_map;

/* The diffusers parts of an original Flux Linear ("double_blocks.3.img_attn.qkv"); false when
 * module is not one. */
bool fl_lora_diffusers_names(const char *module, fl_lora_diffusers_map *out);
/* The original module of a diffusers module path ("transformer_blocks.3.attn.to_k") and which
 * part of it that path is; false when the path is not a Flux Linear. */
bool fl_lora_diffusers_source(const char *path, fl_lora_diffusers_map *out, int *part);
/* Rows [row0, row0 + rows) of B that part `part` holds, for a module of shape [out, in]; -1 when
 * the shape cannot be split that way. */
int fl_lora_part_rows(const fl_lora_diffusers_map *map, int part, int64_t in, int64_t out, int64_t *row0,
                      int64_t *rows);

/* True for the path of a Linear of the original Flux layout (any block index). */
bool fl_lora_is_flux_module(const char *module);
/* "lora_unet_" + module with '_' for '.'. */
void fl_lora_kohya_name(const char *module, char *buf, size_t size);
/* The original module of a kohya stem ("lora_unet_double_blocks_0_img_attn_qkv") by the Flux
 * layout alone (no model needed); false when it names no Flux Linear. */
bool fl_lora_kohya_resolve(const char *stem, char *module, size_t size);

#endif
