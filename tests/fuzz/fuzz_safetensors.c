/*
 * fuzz_safetensors.c — libFuzzer target for the safetensors reader. Each input is opened through
 * fl_safetensors_open_memory; when it parses, every tensor and metadata entry is walked, looked
 * up by name, viewed as an fl_tensor where the dtype is computable, and the first and last byte
 * of each tensor are read, so a wrong bound shows up as a sanitizer report. The same file is
 * linked into fuzz_replay (a plain main()) to replay the committed corpus as a regression test.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fl_error err;
    fl_error_clear(&err);
    fl_safetensors *f = NULL;
    if (fl_safetensors_open_memory(data, size, &f, &err)) {
        /* A rejection must come with a code and a one-line reason. */
        FL_CHECKF(f == NULL && err.code != FL_OK && err.message[0] != '\0', "rejection without a reason");
        FL_CHECKF(strchr(err.message, '\n') == NULL, "multi-line error message: %s", err.message);
        return 0;
    }
    const uint8_t *lo = data, *hi = data + size;
    volatile uint8_t sink = 0;
    uint64_t header = fl_safetensors_header_size(f), buffer = fl_safetensors_data_size(f);
    FL_CHECK(8 + header + buffer == size);
    for (size_t i = 0; i < fl_safetensors_count(f); i++) {
        const fl_safetensors_info *t = fl_safetensors_at(f, i);
        FL_CHECK(fl_safetensors_find(f, t->name) == t);
        FL_CHECK(t->end - t->begin == t->nbytes && t->end <= buffer);
        FL_CHECK(t->ndim >= 0 && t->ndim <= FL_SAFETENSORS_MAX_DIMS);
        if (t->nbytes) {
            const uint8_t *p = t->data;
            FL_CHECK(p >= lo && p + t->nbytes <= hi);
            sink ^= p[0];
            sink ^= p[t->nbytes - 1];
        }
        fl_tensor view;
        fl_error verr;
        fl_error_clear(&verr);
        if (fl_safetensors_tensor_view(f, t, fl_device_cpu(), &view, &verr) == 0) {
            FL_CHECK(view.data == t->data);
            FL_CHECK((uint64_t)fl_tensor_numel(&view) == (uint64_t)t->numel);
            FL_CHECK(fl_tensor_nbytes(&view) == t->nbytes);
        } else {
            FL_CHECK(verr.code == FL_EUNSUPPORTED);
        }
    }
    for (size_t i = 0; i < fl_safetensors_metadata_count(f); i++) {
        const char *key, *value;
        fl_safetensors_metadata_at(f, i, &key, &value);
        FL_CHECK(fl_safetensors_metadata_get(f, key) == value);
        sink ^= (uint8_t)strlen(value);
    }
    (void)sink;
    fl_safetensors_close(f);
    return 0;
}
